"""`TraceStatsPy` make function, in Python: udfs/rust/trace_stats's make, with the Python helper.

    lab.Trace(trace_id int32; trace <blob@store>, gain <blob>)                   [manual]
    lab.TraceStatsPy(-> Trace; n int64, mean float64, peak float64,
                     centered <blob@store>, summary <blob>, report <object@store>) [computed]
    lab.TraceStatsPy.Window(-> master, window int32; energy float64,
                            samples <npy@store>)                                 [part]

Reads the float64 trace (streamed from the store, decoded by the helper's pure-Python blob codec),
writes the gain-scaled, mean-centred trace as a <blob@store> of the same shape, a summary array
in the row, a text report as an <object@store>, and per window of 65 536 samples a part row with
the samples as a <npy@store>.
"""

import array
import struct

import datajoint_make as dj

WINDOW = 65_536


def npy_f64(values) -> bytes:
    """A 1-d float64 array in numpy's .npy format (version 1.0)."""
    header = "{'descr': '<f8', 'fortran_order': False, 'shape': (%d,), }" % len(values)
    header += " " * ((-(10 + len(header) + 1)) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode() + values.tobytes()


def make(key: dict) -> None:
    row = dj.fetch1("Trace", attributes=["trace", "gain"])
    trace = dj.blob(row["trace"])
    gain = dj.blob(row["gain"]).data[0]
    if not isinstance(trace, dj.Array) or trace.dtype != "float64":
        raise ValueError(f"trace {key} is not a float64 array")
    n = len(trace.data)
    if n == 0:
        raise ValueError("the trace is empty")
    mean = sum(trace.data) / n
    peak = max(trace.data)
    centered = array.array("d", [(x - mean) * gain for x in trace.data])

    centered_ref = dj.put_blob("TraceStatsPy", "centered", dj.Array("float64", trace.shape, centered), key)
    summary = dj.encode_blob(dj.Array("float64", (1, 3), [float(n), mean, peak]))
    with dj.Upload("TraceStatsPy", "report", key, filename="report.txt") as report:
        named = ", ".join(f"{k}: {v}" for k, v in key.items())
        report.write(f"trace {{{named}}}: {n} samples, shape {list(trace.shape)}\n".encode())
        report.write(f"mean {mean}\npeak {peak}\ngain {gain}\n".encode())
        report_ref = report.finish()
    dj.insert1(
        "TraceStatsPy",
        {**key, "n": n, "mean": mean, "peak": peak, "centered": centered_ref, "summary": summary, "report": report_ref},
    )
    for i in range(0, n, WINDOW):
        window = centered[i : i + WINDOW]
        part_key = {**key, "window": i // WINDOW}
        samples = dj.put_object("Window", "samples", npy_f64(window), part_key)
        dj.insert1("Window", {**part_key, "energy": sum(x * x for x in window), "samples": samples})


WitWorld = dj.make_world(make)
