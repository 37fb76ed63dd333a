"""MONAI Label ``/infer`` against ``run inferring`` on the same CT, network and weights, in one run (issue 19).

    .venv/bin/python bench/bench_monai_label.py                     # 512x512x200 SYNTHETIC CT + the real CT
    .venv/bin/python bench/bench_monai_label.py --quick             # 64-slice CT, Pocket U-Net 2D only, no docs

A MONAI Label 0.8.5 server (``tools/monailabel_env.py``'s environment, the unmodified ``monaibundle`` app, this
bundle copied in as a model, ``--conf models <name>``) runs on 127.0.0.1; per network the bundle copy's
``configs/inference.json`` is ``inference.json`` merged with the network's overlay (MONAI Label reads that one
file). One warm-up ``/infer`` loads the network (as the first "Auto segment" after a server start); then each
round times one ``/infer`` (server side: MONAI Label's own ``latencies.total``; and the client's wall time, upload
and download included) and one ``python -m monai.bundle run inferring`` process (wall time from process start to
exit, imports included), alternately, with the same seeded random weights. Both use the default settings a user
gets (``auto`` fast path; Slicer's ``.nrrd`` result vs the CLI's NIfTI + preview). Peak memory: the server's
``VmRSS`` sampled during the request (minus idle) and the ``run inferring`` process's ``VmHWM``.

Writes ``bench/results/monai_label_<date>.json`` and the block between the ``bench_monai_label`` markers of
``docs/performance.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import nibabel as nib
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "bench"), str(REPO / "tools")]

from common import load_average, machine, run_child  # noqa: E402
from run import build_ct  # noqa: E402

import monailabel_env  # noqa: E402

MODEL = "kidney_ct"
BUNDLE_CONTENT = ("configs", "scripts", "docs", "LICENSE", "large_files.yml")
REAL_CT = REPO.parent / "shared" / "data" / "totalseg_example" / "example_ct_sm.nii.gz"
NETWORKS = {"default": [], "pocket_unet_2d": ["configs/networks/pocket_unet_2d.json"]}
ENV = {"THP_MEM_ALLOC_ENABLE": "1"}  # both sides, as docs/performance.md recommends for CPU inference


def merged_bundle(app: Path, overlays: list[str], weights_seed: int = 0) -> tuple[Path, Path]:
    """Copy the bundle into ``app/model/MODEL`` with inference.json merged with ``overlays``; seeded weights."""
    from monai.bundle import ConfigParser

    bundle = app / "model" / MODEL
    if bundle.exists():
        shutil.rmtree(bundle)
    for item in BUNDLE_CONTENT:
        src = REPO / item
        (shutil.copytree(src, bundle / item, ignore=shutil.ignore_patterns("__pycache__"))
         if src.is_dir() else shutil.copy2(src, bundle / item))
    parser = ConfigParser()
    parser.read_config([str(REPO / "configs" / "inference.json"), *[str(REPO / o) for o in overlays]])
    ConfigParser.export_config_file(parser.get(), str(bundle / "configs" / "inference.json"), indent=4)
    parser["bundle_root"], parser["device"] = str(bundle), "cpu"
    torch.manual_seed(weights_seed)
    (bundle / "models").mkdir()
    weights = bundle / "models" / "model.pt"
    torch.save({"model": parser.get_parsed_content("network_def").state_dict()}, weights)
    return bundle, weights


def _rss_mb(pid: int, field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Server:
    def __init__(self, python: Path, app: Path, studies: Path, log: Path) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        env = {**os.environ, **ENV, "PYTHONPATH": "", "MONAI_LABEL_SESSION_PATH": str(app.parent / "sessions")}
        cmd = [str(python), "-m", "monailabel.main", "start_server", "--app", str(app), "--studies", str(studies),
               "--conf", "models", MODEL, "--conf", "zoo_source", "github", "--conf", "sam2", "false",
               "--host", "127.0.0.1", "--port", str(port)]
        self.log = log
        with log.open("wb") as out:
            self.proc = subprocess.Popen(cmd, cwd=app.parent, env=env, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited; log {log}")
            try:
                with urllib.request.urlopen(self.url + "/info/", timeout=5):
                    return
            except OSError:
                time.sleep(1)
        raise RuntimeError(f"server did not start; log {log}")

    def infer(self, image_id: str) -> dict:
        """POST /infer as the Slicer plugin does; returns the server's latencies, client wall and peak RSS."""
        with urllib.request.urlopen(self.url + "/info/", timeout=60) as resp:
            config = json.loads(resp.read())["models"][MODEL]["config"]
        params = {k: v[0] if isinstance(v, list) else v for k, v in config.items()}
        params.update(result_extension=".nrrd", result_dtype="uint8", client_id="bench")
        boundary = uuid.uuid4().hex
        body = (f'--{boundary}\r\nContent-Disposition: form-data; name="params"\r\n\r\n{json.dumps(params)}\r\n'
                f"--{boundary}--\r\n").encode()
        request = urllib.request.Request(f"{self.url}/infer/{MODEL}?image={image_id}", data=body, method="POST")
        request.add_header("Content-Type", f"multipart/form-data; boundary={boundary}")
        idle = _rss_mb(self.proc.pid)
        samples, done = [idle], threading.Event()

        def sample() -> None:
            while not done.wait(0.05):
                samples.append(_rss_mb(self.proc.pid))

        sampler = threading.Thread(target=sample)
        sampler.start()
        start = time.perf_counter()
        try:
            with urllib.request.urlopen(request, timeout=1800) as resp:
                content, ctype = resp.read(), resp.headers["Content-Type"]
        finally:
            done.set()
            sampler.join()
        wall = time.perf_counter() - start
        import email

        message = email.message_from_bytes(f"Content-Type: {ctype}\r\n\r\n".encode() + content)
        parts = {p.get_param("name", header="content-disposition"): p for p in message.get_payload()}
        latencies = json.loads(parts["params"].get_payload(decode=True))["latencies"]
        return {"server_s": latencies["total"], "client_s": wall, "latencies": latencies,
                "rss_idle_mb": idle, "rss_peak_mb": max(samples)}

    def stop(self) -> None:
        import signal

        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def run_inferring(configs: list[str], ct: Path, weights: Path, out: Path) -> dict:
    """The ``run inferring`` process, timed from start to exit; its own peak RSS from a wrapper."""
    if out.exists():
        shutil.rmtree(out)
    code = ("import resource, runpy, sys; sys.argv = ['monai.bundle'] + sys.argv[1:]\n"
            "try:\n    runpy.run_module('monai.bundle', run_name='__main__')\n"
            "finally:\n    print('PEAK_RSS_MB', open('/proc/self/status').read().split('VmHWM:')[1].split()[0])")
    args = [sys.executable, "-c", code, "run", "inferring", "--config_file", json.dumps(configs),
            "--input_path", str(ct), "--output_dir", str(out), "--model_path", str(weights)]
    child = run_child(args, env={**os.environ, **ENV, "PYTHONPATH": str(REPO)})
    peak = [ln for ln in child.output.splitlines() if ln.startswith("PEAK_RSS_MB")]
    return {"process_s": child.seconds, "peak_rss_mb": int(peak[-1].split()[1]) / 1024 if peak else None}


def bench_case(server_python: Path, work: Path, name: str, ct: Path, network: str, repeats: int) -> dict:
    app = work / "app"
    if not app.exists():
        prefix = subprocess.run([str(server_python), "-c", "import sys; print(sys.prefix)"], capture_output=True,
                                text=True, check=True).stdout.strip()
        shutil.copytree(Path(prefix) / "monailabel" / "sample-apps" / "monaibundle", app,
                        ignore=shutil.ignore_patterns("__pycache__"))
    bundle, weights = merged_bundle(app, NETWORKS[network])
    studies = work / f"studies_{name}"
    studies.mkdir(exist_ok=True)
    study = studies / "ct.nii.gz"
    shutil.copy2(ct, study)
    configs = [str(REPO / "configs" / "inference.json"), *[str(REPO / o) for o in NETWORKS[network]]]
    print(f"[{time.strftime('%H:%M:%S')}] {name}: {nib.load(ct).shape}, network {network}", flush=True)
    server = Server(server_python, app, studies, work / f"server_{name}_{network}.log")
    try:
        warm = server.infer("ct")
        print(f"  warm-up /infer {warm['server_s']:.1f} s (network load included)", flush=True)
        rounds = []
        for r in range(repeats):
            ml = server.infer("ct")
            cli = run_inferring(configs, ct, weights, work / "cli_out")
            rounds.append({"monai_label": ml, "run_inferring": cli, "load": load_average()})
            print(f"  round {r + 1}: /infer server {ml['server_s']:.2f} s (client {ml['client_s']:.2f} s, "
                  f"RSS +{ml['rss_peak_mb'] - ml['rss_idle_mb']:.0f} MB), run inferring process "
                  f"{cli['process_s']:.2f} s (peak {cli['peak_rss_mb']:.0f} MB), load {load_average()}", flush=True)
    finally:
        server.stop()
    from statistics import median as med

    server_s = med([r["monai_label"]["server_s"] for r in rounds])
    cli_s = med([r["run_inferring"]["process_s"] for r in rounds])
    return {"case": name, "shape": list(nib.load(ct).shape), "network": network, "rounds": rounds,
            "median_server_s": server_s, "median_client_s": med([r["monai_label"]["client_s"] for r in rounds]),
            "median_run_inferring_s": cli_s, "ratio": server_s / cli_s,
            "round_ratios": [r["monai_label"]["server_s"] / r["run_inferring"]["process_s"] for r in rounds],
            "server_rss_growth_mb": max(r["monai_label"]["rss_peak_mb"] - r["monai_label"]["rss_idle_mb"]
                                        for r in rounds),
            "run_inferring_peak_rss_mb": max(r["run_inferring"]["peak_rss_mb"] or 0 for r in rounds)}


def render(result: dict) -> str:
    m = result["machine"]
    loads = [r["load"][0] for c in result["cases"] for r in c["rounds"]]
    lines = [f"Measured {result['date']} on {m['cpu']} ({m['cores']} cores, {', '.join(m['simd'][:4])}...; "
             f"bf16 native: {m['bf16_native']}), commit {m['commit']}. **The machine was shared with other "
             f"engineers' jobs during this run** (1-minute load average {min(loads):.1f}-{max(loads):.1f} on "
             f"{m['cores']} cores; per round in the JSON, "
             f"`{result['json']}`): absolute times are noisy; the two columns of a row were measured "
             "alternately in the same minutes. Random seeded weights (time depends on shapes, not values).", "",
             "| CT | network | MONAI Label `/infer`, server side (s) | client wall (s) | `run inferring` process (s) "
             "| ratio (per round) | server RSS growth (MB) | `run inferring` peak RSS (MB) |",
             "|---|---|---|---|---|---|---|---|"]
    for c in result["cases"]:
        lines.append(f"| {c['case']} {'x'.join(map(str, c['shape']))} | {c['network']} | {c['median_server_s']:.1f} "
                     f"| {c['median_client_s']:.1f} | {c['median_run_inferring_s']:.1f} | **{c['ratio']:.2f}x** "
                     f"({', '.join(f'{x:.2f}' for x in c['round_ratios'])}) "
                     f"| {c['server_rss_growth_mb']:.0f} | {c['run_inferring_peak_rss_mb']:.0f} |")
    lines += ["", f"Medians of {result['repeats']} rounds after one warm-up request. "
              "`bench/bench_monai_label.py`; the ratio is server side / whole process (the issue's target: 1.2x)."]
    return "\n".join(lines)


def rerender(json_path: Path) -> None:
    """Recompute the medians of a results file and rewrite it and the docs block (no new measurement)."""
    from statistics import median

    from scripts.common.atomic import atomic_write_text, replace_marked_block

    result = json.loads(json_path.read_text())
    for c in result["cases"]:
        rounds = c["rounds"]
        c["median_server_s"] = median(r["monai_label"]["server_s"] for r in rounds)
        c["median_client_s"] = median(r["monai_label"]["client_s"] for r in rounds)
        c["median_run_inferring_s"] = median(r["run_inferring"]["process_s"] for r in rounds)
        c["ratio"] = c["median_server_s"] / c["median_run_inferring_s"]
        c["round_ratios"] = [r["monai_label"]["server_s"] / r["run_inferring"]["process_s"] for r in rounds]
    atomic_write_text(json_path, json.dumps(result, indent=2) + "\n")
    replace_marked_block(REPO / "docs" / "performance.md", "<!-- bench_monai_label:begin -->",
                         "<!-- bench_monai_label:end -->", render(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--slices", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--networks", default="pocket_unet_2d,default", help="for the 512x512 CT")
    parser.add_argument("--real-networks", default="default", help="for the real CT (../shared/data)")
    parser.add_argument("--quick", action="store_true", help="64 slices, Pocket U-Net 2D, one round, no docs")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--rerender", type=Path, default=None, help="only recompute the table of a results JSON")
    args = parser.parse_args()
    if args.rerender:
        return rerender(args.rerender)
    if args.quick:
        args.slices, args.repeats, args.networks = 64, 1, "pocket_unet_2d"
    server_python = monailabel_env.ensure_env(log=lambda msg: print(msg, file=sys.stderr))
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench_monai_label_"))
    work.mkdir(parents=True, exist_ok=True)
    ct = build_ct(work, args.slices, storage="kits")
    cases = [bench_case(server_python, work, f"synthetic{args.slices}", ct, net, args.repeats)
             for net in args.networks.split(",")]
    if REAL_CT.exists() and not args.quick:
        cases += [bench_case(server_python, work, "real", REAL_CT, net, args.repeats)
                  for net in args.real_networks.split(",")]
    elif not REAL_CT.exists():
        print(f"real CT skipped: {REAL_CT} is absent", flush=True)
    date = time.strftime("%Y%m%d")
    json_path = REPO / "bench" / "results" / f"monai_label_{date}.json"
    result = {"date": date, "machine": machine(), "repeats": args.repeats, "cases": cases,
              "json": str(json_path.relative_to(REPO))}
    table = render(result)
    print(table)
    if not args.quick:
        from scripts.common.atomic import atomic_write_text, replace_marked_block

        atomic_write_text(json_path, json.dumps(result, indent=2) + "\n")
        replace_marked_block(REPO / "docs" / "performance.md", "<!-- bench_monai_label:begin -->",
                             "<!-- bench_monai_label:end -->", table,
                             title="")
    print("SUMMARY " + "; ".join(f"{c['case']}/{c['network']} {c['ratio']:.2f}x" for c in cases))


if __name__ == "__main__":
    main()
