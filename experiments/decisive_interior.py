"""A look beside the pre-registered rule (docs/reproduction.md, "Pre-registered: the reference
process at 8 000 steps on three seeds"), not part of it: the decisive study's pairs scored on the
field's interior only, the outer MARGIN pixels (default 2) of every side left out of forecast and
truth alike.

The study's recipe pads the network's convolutions with zeros although the generated turbulence is
periodic, and the sampler's warning counts forecast values far (more than 10 × the data scale)
from the data; nearly all of them lie on the border pixels, where CRPS w8 max (the largest
8×8-window score) picks them up. This asks how much of each paired change comes from the border.

For each seed whose two runs are in OUT (OUT/reference_eta{0.5,0}_seed{s}/forecast.npy), the
forecast and the truth (OUT/test.npy, frames from the forecast's first forecast frame) are cropped
and scored by `dydiff eval`; the report is kept as
experiments/results/decisive/{run}/eval_interior{MARGIN}.json (computed from what is kept there
where OUT no longer has the forecast). Prints, per seed, the share of far values within MARGIN
pixels of the border and the paired changes Δ_s = DyDiff_s / standard_s − 1 on the interior, next
to the whole field's.

    python3 experiments/decisive_interior.py [OUT] [BIN] [MARGIN]

Standard library only (the .npy files are read and written directly: little-endian float32,
C order).
"""

import ast
import json
import pathlib
import statistics
import struct
import subprocess
import sys
import tempfile
from array import array

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from decisive_table import BIN, KEPT, KEYS, MODELS, OUT, SEEDS, scored  # noqa: E402  (OUT, BIN: argv 1, 2)

MARGIN = int(sys.argv[3]) if len(sys.argv) > 3 else 2
ETAS = [eta for eta, _ in MODELS]
FAR = 10 * 0.99  # the sampler's warning: 10 × the data scale (the training data's standard deviation)


def read_npy(path: pathlib.Path) -> tuple[list[int], array]:
    raw = path.read_bytes()
    if raw[:6] != b"\x93NUMPY":
        sys.exit(f"{path}: not a .npy file")
    major = raw[6]
    size_bytes = 2 if major == 1 else 4
    (length,) = struct.unpack("<H" if size_bytes == 2 else "<I", raw[8:8 + size_bytes])
    start = 8 + size_bytes
    header = ast.literal_eval(raw[start:start + length].decode("latin1"))
    if header["descr"] != "<f4" or header["fortran_order"]:
        sys.exit(f"{path}: expected little-endian float32 in C order, found {header}")
    data = array("f")
    data.frombytes(raw[start + length:])
    return list(header["shape"]), data


def write_npy(path: pathlib.Path, shape: list[int], data: array) -> None:
    header = "{'descr': '<f4', 'fortran_order': False, 'shape': (" + "".join(f"{d}, " for d in shape) + "), }"
    pad = 64 - (10 + len(header) + 1) % 64
    header = header + " " * (pad % 64) + "\n"
    path.write_bytes(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode("latin1")
                     + data.tobytes())


def crop(shape: list[int], data: array, margin: int) -> tuple[list[int], array, int, int]:
    """The array with `margin` pixels left out on every side of its last two axes; also the count
    of far values in all of it and within the margin."""
    h, w = shape[-2:]
    out = array("f")
    far = far_border = 0
    for plane in range(len(data) // (h * w)):
        base = plane * h * w
        for y in range(h):
            row = data[base + y * w: base + (y + 1) * w]
            inner_row = margin <= y < h - margin
            for x, v in enumerate(row):
                if abs(v) > FAR:
                    far += 1
                    far_border += not (inner_row and margin <= x < w - margin)
            if inner_row:
                out.extend(row[margin:w - margin])
    return shape[:-2] + [h - 2 * margin, w - 2 * margin], out, far, far_border


def interior(run: str, tmp: pathlib.Path) -> dict | None:
    """The kept interior report of `run` with its far-value counts, scoring OUT/run's forecast
    where none is kept; None where neither is there."""
    kept = KEPT / run / f"eval_interior{MARGIN}.json"
    if kept.exists():
        return json.loads(kept.read_text())
    forecast = OUT / run / "forecast.npy"
    if not forecast.exists():
        return None
    window = json.loads((OUT / run / "forecast.window.json").read_text())
    shape, data = read_npy(forecast)
    shape, data, far, far_border = crop(shape, data, MARGIN)
    write_npy(tmp / f"{run}.npy", shape, data)
    truth = tmp / "truth.npy"
    if not truth.exists():
        tshape, tdata = read_npy(OUT / "test.npy")
        tshape, tdata, _, _ = crop(tshape, tdata, MARGIN)
        write_npy(truth, tshape, tdata)
    report = tmp / f"{run}.json"
    subprocess.run([BIN, "eval", "--forecast", str(tmp / f"{run}.npy"), "--truth", str(truth), "--truth-start",
                    str(window["first_forecast_frame"]), "--json", str(report)], check=True,
                   stdout=subprocess.DEVNULL)
    scores = json.loads(report.read_text())
    kept_report = {"margin": MARGIN, "far_values": far, "far_values_within_margin": far_border,
                   "overall": scores["overall"]}
    kept.parent.mkdir(parents=True, exist_ok=True)
    kept.write_text(json.dumps(kept_report, indent=1) + "\n")
    return kept_report


def main() -> None:
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in SEEDS:
            reports = [interior(f"reference_eta{eta}_seed{seed}", pathlib.Path(tmp)) for eta in ETAS]
            whole = [KEPT / f"reference_eta{eta}_seed{seed}" for eta in ETAS]
            if all(reports) and all((d / "eval_rule.json").exists() for d in whole):
                rows[seed] = (reports, [scored(d, "dydiff")["overall"] for d in whole])
    if not rows:
        sys.exit(f"{OUT} and {KEPT}: no seed with both forecasts (or their interior scores)")
    print(f"Interior: {MARGIN} border pixels left out on every side; far: |value| > {FAR:.2f}\n")
    print("| seed | model | far values | of them within the margin |")
    print("|---|---|---|---|")
    for seed, (reports, _) in rows.items():
        for eta, r in zip(ETAS, reports):
            share = r["far_values_within_margin"] / r["far_values"] if r["far_values"] else 0
            print(f"| {seed} | dyn_eta {eta} | {r['far_values']} | {r['far_values_within_margin']} ({100 * share:.1f}%) |")
    print("\nPaired change Δ_s = DyDiff / standard − 1, whole field → interior:\n")
    print("| score | " + " | ".join(f"seed {s}" for s in rows) + " | mean |")
    print("|---|" + "---|" * (len(rows) + 1))
    for key, label in KEYS:
        cells, means_whole, means_inner = [], [], []
        for reports, whole in rows.values():
            dw = whole[0][key] / whole[1][key] - 1
            di = reports[0]["overall"][key] / reports[1]["overall"][key] - 1
            means_whole.append(dw)
            means_inner.append(di)
            cells.append(f"{100 * dw:+.1f}% → {100 * di:+.1f}%")
        mean = f"{100 * statistics.mean(means_whole):+.1f}% → {100 * statistics.mean(means_inner):+.1f}%"
        print(f"| {label} | " + " | ".join(cells) + f" | {mean} |")


if __name__ == "__main__":
    main()
