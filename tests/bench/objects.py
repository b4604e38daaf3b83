"""P5 object benchmark, side by side in one run (`make bench`).

- A BENCH_OBJECT_MB (default 1024) MiB file of random bytes on the server's disk: `cp` of it (the
  baseline), dj.object_put_file into the local file store (hashed and written once, streamed in
  8 MiB parts) and dj.object_get_file out of it (hash checked), each the best of BENCH_REPEAT
  (default 3) runs; the backend's peak RSS (VmHWM) over what it was before the first transfer.
- The same put and get against a real S3 server (SeaweedFS `weed mini` on 127.0.0.1), in MB/s.
- Blob decode and encode speed, MB of array payload per second: datajoint-python 2.3.5's
  `blob.unpack`/`blob.pack` and the core codec (core/examples/blob_speed.rs) on the same blobs.
"""
import json
import os
import pathlib
import platform
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import psycopg
from datajoint import blob as djblob

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "client"))
from conftest import seaweed_server  # noqa: E402

MB = int(os.environ.get("BENCH_OBJECT_MB", "1024"))
REPEAT = int(os.environ.get("BENCH_REPEAT", "3"))
S = "bench_objects"


def rss_kb(pid: int, field: str) -> int:
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def best(f, repeat=REPEAT):
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return min(times)


def transfers(c, work: pathlib.Path, source: pathlib.Path, table: str, size: int, repeat=REPEAT, attribute="raw"):
    """Best put and get seconds for one attribute; the object is removed between puts so each one writes."""
    out = work / "out.dat"
    ref = None

    def put():
        nonlocal ref
        ref = c.execute(f"SELECT dj.object_put_file('{S}.{table}', %s, %s, key => '{{\"k\": 1}}')",
                        (attribute, str(source))).fetchone()[0]

    def forget():
        # Not timed: the stored object goes, so the next put writes it again.
        c.execute("SELECT dj.gc(s, dry_run => false, grace => '0') FROM (VALUES (%s)) v(s)", (ref["store"],))

    put_times = []
    for _ in range(repeat):
        if ref is not None:
            forget()
        put_times.append(best(put, 1))
    assert ref["size"] == size
    get = best(lambda: c.execute("SELECT dj.object_get_file(%s, %s)", (json.dumps(ref), str(out))).fetchone(), repeat)
    assert out.stat().st_size == size
    out.unlink()
    forget()
    return min(put_times), get


def main():
    c = psycopg.connect(autocommit=True)
    c.execute("CREATE EXTENSION IF NOT EXISTS datajoint")
    c.execute(f"DROP SCHEMA IF EXISTS {S} CASCADE")
    c.execute(f"CREATE SCHEMA {S}")
    c.execute("SELECT dj.declare(%s, 'manual', %s)", (f"{S}.Local", "k : int32\n---\nraw : <hash@local>\nobj : <object@local>"))
    pid = c.execute("SELECT pg_backend_pid()").fetchone()[0]
    size = MB << 20
    work = pathlib.Path(tempfile.mkdtemp(prefix="dj-bench-objects-"))
    work.chmod(0o777)
    print(f"\n== P5 objects, {time.strftime('%Y-%m-%d %H:%M:%S %Z')}, {platform.node()} ({os.cpu_count()} cores, "
          f"PostgreSQL {c.execute('SHOW server_version').fetchone()[0]}), {MB} MiB object, best of {REPEAT}")
    try:
        source = work / "object.dat"
        with open(source, "wb") as f:
            chunk = os.urandom(64 << 20)
            for i in range(0, size, len(chunk)):
                f.write(chunk[: min(len(chunk), size - i)])
        source.chmod(0o644)
        copy = work / "copy.dat"
        cp = best(lambda: subprocess.run(["cp", str(source), str(copy)], check=True))
        copy.unlink()
        md5 = best(lambda: subprocess.run(["md5sum", str(source)], check=True, capture_output=True))
        base_rss = rss_kb(pid, "VmRSS")
        base_hwm = rss_kb(pid, "VmHWM")
        put, get = transfers(c, work, source, "Local", size)
        oput, oget = transfers(c, work, source, "Local", size, attribute="obj")
        extra_mb = (rss_kb(pid, "VmHWM") - max(base_rss, 0)) / 1024
        mbps = lambda s: size / s / 1e6  # noqa: E731
        print(f"{'local file store':<44}{'seconds':>10}{'MB/s':>10}{'vs cp':>8}")
        for name, t in [("cp (baseline)", cp), ("md5sum (the hash alone)", md5),
                        ("<object@local> dj.object_put_file", oput), ("<object@local> dj.object_get_file", oget),
                        ("<hash@local> dj.object_put_file (MD5)", put),
                        ("<hash@local> dj.object_get_file (MD5 check)", get)]:
            print(f"{name:<44}{t:>10.2f}{mbps(t):>10.0f}{cp / t:>8.2f}")
        print(f"backend peak RSS over its start: {extra_mb:.0f} MB (VmHWM {rss_kb(pid, 'VmHWM') / 1024:.0f} MB, "
              f"VmRSS before {base_rss / 1024:.0f} MB, VmHWM before {base_hwm / 1024:.0f} MB)")

        (work / "seaweed").mkdir()
        with seaweed_server(work / "seaweed") as s3:
            spec = {"protocol": "s3", "endpoint": s3["endpoint"], "bucket": s3["bucket"], "location": "bench",
                    "secure": False, "access_key": s3["access_key"], "secret_key": s3["secret_key"]}
            c.execute("SELECT dj.add_store('bench_s3', %s, replace => true)", (json.dumps(spec),))
            c.execute("SELECT dj.declare(%s, 'manual', %s)", (f"{S}.Remote", "k : int32\n---\nraw : <hash@bench_s3>\nobj : <object@bench_s3>"))
            put, get = transfers(c, work, source, "Remote", size, repeat=1)
            oput, oget = transfers(c, work, source, "Remote", size, repeat=1, attribute="obj")
            print(f"{'S3 (SeaweedFS, loopback)':<44}{'put MB/s':>10}{'get MB/s':>10}")
            print(f"{'<object@bench_s3> put_file/get_file':<44}{mbps(oput):>10.0f}{mbps(oget):>10.0f}")
            print(f"{'<hash@bench_s3> put_file/get_file (MD5)':<44}{mbps(put):>10.0f}{mbps(get):>10.0f}")
            c.execute(f"DROP TABLE {S}.remote")
            c.execute("SELECT dj.drop_store('bench_s3')")

        print(f"{'blob codec, MB/s of payload':<36}{'unpack':>9}{'pack':>9}{'  core':>9}{'core':>9}  same bytes")
        print(f"{'':<36}{'(python)':>9}{'(python)':>9}{'decode':>9}{'encode':>9}")
        rng = np.random.default_rng(0)
        arrays = {
            "float64 random, 64 MB": rng.standard_normal(8 << 20),
            "int16 ramp 4096x4096, 32 MB": (np.arange(1 << 24) % 4096).astype("int16").reshape(4096, 4096),
            "uint8 image 2048x2048x3, 12 MB": rng.integers(0, 4, (2048, 2048, 3), dtype="uint8"),
        }
        subprocess.run(["cargo", "build", "--quiet", "--release", "-p", "datajoint-core", "--example", "blob_speed"],
                       check=True, cwd=ROOT)
        exe = ROOT / "target" / "release" / "examples" / "blob_speed"
        for name, array in arrays.items():
            packed = djblob.pack(array)
            unpack = best(lambda: djblob.unpack(packed))
            pack = best(lambda: djblob.pack(array))
            f = work / "array.blob"
            f.write_bytes(packed)
            decode, encode, same = subprocess.run([str(exe), str(f), str(REPEAT)], check=True, capture_output=True,
                                                  text=True).stdout.split()
            n = array.nbytes / 1e6
            print(f"{name:<36}{n / unpack:>9.0f}{n / pack:>9.0f}{float(decode):>9.0f}{float(encode):>9.0f}  {same}")
    finally:
        c.execute(f"DROP SCHEMA IF EXISTS {S} CASCADE")
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
