"""Installing a 100 MB app archive: the server's peak memory growth, and the time against
`tar -xzf` of the same file in the same run.

    uv run python bench/install_archive.py [--megabytes 100]

The archive holds a package.json, an index.html and one file of random bytes (so gzip
cannot shrink it): the upload is as large as the extracted app. Uses curl to upload, as an
operator would. Writes bench/results/install_archive.json.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from harness import free_port, require, save, smoke, table, wait_for


def _status(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(field)


def build_archive(path: Path, megabytes: int) -> None:
    with tarfile.open(path, "w:gz", compresslevel=1) as tar:
        for name, data in (
            ("package/package.json", json.dumps({"name": "big", "version": "1.0.0"}).encode()),
            ("package/index.html", b"<h1>big</h1>"),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        info = tarfile.TarInfo("package/blob.bin")
        info.size = megabytes * 1024 * 1024
        with open("/dev/urandom", "rb") as random:
            tar.addfile(info, random)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--megabytes", type=int, default=smoke(100, 1))
    args = parser.parse_args()
    require("curl", "curl")
    require("tar", "tar")
    with tempfile.TemporaryDirectory() as tmp:
        archive = Path(tmp, "big.tgz")
        build_archive(archive, args.megabytes)
        size_mb = archive.stat().st_size / 1024**2

        started = time.perf_counter()
        out = Path(tmp, "tar-out")
        out.mkdir()
        subprocess.run(["tar", "-xzf", str(archive), "-C", str(out)], check=True)
        tar_seconds = time.perf_counter() - started

        port = free_port()
        env = {**os.environ, "COURTYARD_UPLOAD_MAX_BYTES": str(2 * archive.stat().st_size)}
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "courtyard",
                "serve",
                "--port",
                str(port),
                "--data-dir",
                str(Path(tmp, "data")),
                "--log-level",
                "warning",
            ],
            env=env,
        )
        try:
            url = f"http://127.0.0.1:{port}"
            wait_for(url + "/api/health/ready", process=server)
            rss_before = _status(server.pid, "VmRSS")
            peak_before = _status(server.pid, "VmHWM")
            started = time.perf_counter()
            answer = subprocess.run(
                [
                    "curl",
                    "-sS",
                    "-H",
                    "X-Courtyard-Internal: true",
                    "-F",
                    f"file=@{archive}",
                    f"{url}/api/apps/upload",
                ],
                check=True,
                capture_output=True,
                text=True,
            )
            upload_seconds = time.perf_counter() - started
            assert json.loads(answer.stdout)["success"], answer.stdout
            peak_after = _status(server.pid, "VmHWM")
            rss_after = _status(server.pid, "VmRSS")
        finally:
            server.terminate()
            server.wait(30)
    row = {
        "archive_mb": size_mb,
        "upload_and_install_s": upload_seconds,
        "tar_xzf_s": tar_seconds,
        "ratio_to_tar": upload_seconds / tar_seconds,
        "rss_before_mb": rss_before,
        "peak_growth_mb": max(0.0, peak_after - max(peak_before, rss_before)),
        "rss_after_mb": rss_after,
    }
    print(table([row]))
    print(f"\nsaved {save('install_archive', row)}")


if __name__ == "__main__":
    main()
