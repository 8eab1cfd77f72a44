"""CPU operator throughput on the sample videos, next to the decode floor measured in the same run, plus:

- `--dj PYTHON`: Data-Juicer's `video_motion_score_filter` (Farneback) on the same clips, called directly in a
  subprocess of a throw-away environment (`bench/_dj_env`, never a project dependency), timed the same way;
- `--calibrate`: motion-tier confusion matrix, OCR character recall, watermark and NSFW scores per sample clip;
- `--flow`: DIS presets vs Farneback, speed and end-point error on frames with known shifts (how DIS was chosen);
- `--fold`: PP-OCRv4 detector and recogniser, shipped graphs vs the `operators.models.onnxfold` rewrite (CPU ms, output diff);
- `--hd`: the same table on 5 s clips at 720p and 1080p, where decoding costs what it costs in production;
- `--every`: also time OCR and NSFW on 3 frames of every clip whatever its duration (`seconds_per_frame: 0`, the
  default before they picked frames by duration: 1 frame per started 4 s, at most 3).

Timing: every stage runs single-threaded (OpenCV and ONNX Runtime set to one thread, decord with one thread), in
`--rounds` interleaved rounds; per stage the median round is kept. Both CPU time of the process (`process_time`, what
a core-bound worker pays, robust to other people's jobs on a shared machine) and wall time are recorded; clips/s are
per core, from CPU time.

    .venv/bin/python bench/operators_cpu.py --make 0 --samples bench/_out/samples0 --rounds 3 --every --hd \
        --dj bench/_dj_env/bin/python --calibrate --flow --out bench/_out/ops_seed0.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OPERATORS = ("quality", "motion", "ocr", "watermark", "nsfw")


# -- clips ----------------------------------------------------------------------------------------------------------

def sample_clips(samples: Path, with_images: bool = False) -> list[dict]:
    """The kept sample videos as clips (a hard-cut video is two clips, split at its labelled cut), plus images."""
    import pandas as pd

    labels = pd.read_parquet(samples / "labels.parquet")
    clips = []
    for r in labels.itertuples():
        if r.media_type == "video" and r.expected_status == "kept":
            n = int(r.num_frames)
            cut = None if pd.isna(r.cut_frame) else int(r.cut_frame)
            for a, b in ([(0, cut), (cut, n)] if cut else [(0, n)]):
                clips.append(dict(file=r.file, path=str(samples / r.file), start=a, end=b, fps=float(r.fps),
                                  width=int(r.width), height=int(r.height), tier=r.expected_motion_tier,
                                  subtitle=r.subtitle_text if isinstance(r.subtitle_text, str) else None,
                                  lang=r.subtitle_lang if isinstance(r.subtitle_lang, str) else None,
                                  watermark=bool(r.has_watermark), whole=cut is None, notes=r.notes,
                                  media_type="video"))
        elif with_images and r.media_type == "image":
            clips.append(dict(file=r.file, path=str(samples / r.file), media_type="image", tier=None, subtitle=None,
                              lang=None, watermark=False, whole=True, notes=r.notes))
    return clips


def make_hd_clips(out: Path) -> list[dict]:
    """Production-sized clips (5 s at 30 fps, 1280x720 and 1920x1080, pan + subtitle + logo) for the decode ratio."""
    from curation.testing import samples as S

    photos, fonts = S.load_photos(), S.find_fonts()
    clips = []
    for w, h, name in ((1280, 720, "china"), (1920, 1080, "coffee")):
        path = out / f"hd_{h}p.mp4"
        if not path.exists():
            frames = S.pan_frames(photos[name], w, h, 150, 4.0 * w / 480, 0.5)
            frames = S.subtitle_overlay("This is the best coffee in town.", fonts["en"], w, h).apply(frames)
            frames = S.logo_overlay("NEWS24", "tr", fonts["en"], w, h, 0.5).apply(frames)
            S.write_mp4(path, frames, w, h, fps=30)
        clips.append(dict(file=path.name, path=str(path), start=0, end=150, fps=30.0, width=w, height=h,
                          media_type="video", whole=True))
    return clips


def decode(clip: dict) -> dict:
    """The frame views of one clip, exactly as the pipeline decodes them (curation.ingest.frames, default FramesConfig)."""
    from curation.config import FramesConfig
    from curation.ingest.frames import decode_image_views, decode_video_views

    cfg = FramesConfig()
    if clip["media_type"] == "image":
        views = decode_image_views(clip["path"], cfg)
    else:
        views = decode_video_views(clip["path"], clip["start"], clip["end"], clip["fps"],
                                   (clip["width"], clip["height"]), 0, cfg)
        # The clip's duration, as the splitter writes it (OCR and NSFW pick their frames by it).
        return {**views.as_columns(), "duration_s": (clip["end"] - clip["start"]) / clip["fps"]}
    return views.as_columns()


EVERY = {"ocr": {"seconds_per_frame": 0}, "nsfw": {"seconds_per_frame": 0}}  # num_frames (3) of every clip


def build_operators(every: bool = False) -> dict:
    """One set-up instance of each CPU operator (defaults), single-threaded; `every` adds the EVERY variants."""
    from curation.catalog import operator_class

    ops = {}
    for name in OPERATORS:
        cls = operator_class(name)
        kwargs = {"threads": 1} if "threads" in cls.params else {}
        variants = [(name, kwargs)] + ([(f"{name}@3", {**kwargs, **EVERY[name]})] if every and name in EVERY else [])
        for key, kw in variants:
            op = cls(**kw)
            op.setup()
            ops[key] = op
    return ops


# -- timing ---------------------------------------------------------------------------------------------------------

def timed(fn, items) -> tuple[float, float, list]:
    """(CPU seconds, wall seconds, results) of fn over items."""
    c0, w0 = time.process_time(), time.perf_counter()
    out = [fn(x) for x in items]
    return time.process_time() - c0, time.perf_counter() - w0, out


def throughput(clips: list[dict], ops: dict, rounds: int) -> dict:
    """Per stage, the median over interleaved rounds of CPU and wall seconds for all clips."""
    per: dict[str, list[tuple[float, float]]] = {k: [] for k in ("decode", *ops)}
    views = None
    for _ in range(rounds):
        cpu, wall, views = timed(decode, clips)
        per["decode"].append((cpu, wall))
        for name, op in ops.items():
            cpu, wall, _ = timed(op.score_row, views)
            per[name].append((cpu, wall))
    n = len(clips)
    res = {}
    for stage, runs in per.items():
        cpu = statistics.median(r[0] for r in runs)
        wall = statistics.median(r[1] for r in runs)
        res[stage] = {"cpu_ms_per_clip": 1000 * cpu / n, "clips_per_s_cpu": n / cpu,
                      "wall_ms_per_clip": 1000 * wall / n, "clips_per_s_wall": n / wall}
    sets = {"all_cpu_operators": list(OPERATORS)}
    if any(k.endswith("@3") for k in ops):
        sets["all_cpu_operators@3"] = [f"{k}@3" if f"{k}@3" in ops else k for k in OPERATORS]
    for label, members in sets.items():
        ops_cpu = sum(res[k]["cpu_ms_per_clip"] for k in members)
        ops_wall = sum(res[k]["wall_ms_per_clip"] for k in members)
        res[label] = {"cpu_ms_per_clip": ops_cpu, "clips_per_s_cpu": 1000 / ops_cpu, "wall_ms_per_clip": ops_wall,
                      "clips_per_s_wall": 1000 / ops_wall,
                      "ratio_to_decode_cpu": ops_cpu / res["decode"]["cpu_ms_per_clip"],
                      "ratio_to_decode_wall": ops_wall / res["decode"]["wall_ms_per_clip"]}
    res["clips"] = n
    return res


# -- Data-Juicer side by side -------------------------------------------------------------------------------------

def dj_worker(spec_path: str) -> None:
    """Runs inside the Data-Juicer environment: time VideoMotionScoreFilter.compute_stats_single on each video."""
    import cv2
    import numpy as np
    from data_juicer.ops.filter.video_motion_score_filter import VideoMotionScoreFilter
    from data_juicer.utils.constant import Fields, StatsKeys

    cv2.setNumThreads(1)
    spec = json.loads(Path(spec_path).read_text())
    op = VideoMotionScoreFilter(**spec.get("params", {}))
    op.compute_stats_single({"videos": [spec["videos"][0]], "text": "", Fields.stats: {}})  # warm-up (lazy imports)
    runs, scores = [], None
    for _ in range(spec["rounds"]):
        c0, w0 = time.process_time(), time.perf_counter()
        out = [op.compute_stats_single({"videos": [v], "text": "", Fields.stats: {}}) for v in spec["videos"]]
        runs.append((time.process_time() - c0, time.perf_counter() - w0))
        scores = [float(np.asarray(s[Fields.stats][StatsKeys.video_motion_score]).reshape(-1)[0]) for s in out]
    # The same calls with the flow fields' conversion to Python lists (`np.stack(flows).tolist()`, done whether or
    # not the flows are requested, ~70 % of the operator's time in a profile) short-circuited: DJ's decode, seeks and
    # Farneback only. The module's `np` is swapped for a proxy whose `stack` returns an object with an empty tolist().
    import data_juicer.ops.filter.video_motion_score_filter as djmod

    class _NoList:
        def tolist(self):
            return []

    class _NpProxy:
        def __getattr__(self, name):
            return (lambda *a, **k: _NoList()) if name == "stack" else getattr(np, name)

    djmod.np = _NpProxy()
    nolist_runs = []
    for _ in range(spec["rounds"]):
        c0, w0 = time.process_time(), time.perf_counter()
        for v in spec["videos"]:
            op.compute_stats_single({"videos": [v], "text": "", Fields.stats: {}})
        nolist_runs.append((time.process_time() - c0, time.perf_counter() - w0))
    djmod.np = np
    # Flow only, on the very frames our motion operator gets: DJ's own compute_flow (Farneback) pair by pair.
    frames = np.load(spec["frames"], allow_pickle=True)["motion_frames"]
    flow_runs = []
    for _ in range(spec["rounds"]):
        c0, w0 = time.process_time(), time.perf_counter()
        for clip in frames:
            prev = None
            for f in clip:
                _, prev = op.compute_flow(prev, cv2.cvtColor(f, cv2.COLOR_GRAY2BGR))
        flow_runs.append((time.process_time() - c0, time.perf_counter() - w0))
    print(json.dumps({"runs": runs, "scores": scores, "flow_runs": flow_runs, "nolist_runs": nolist_runs,
                      "version": _dj_version()}))


def _dj_version() -> str:
    from importlib.metadata import version

    return version("py-data-juicer")


def data_juicer_side_by_side(clips: list[dict], ops: dict, dj_python: str, rounds: int, workdir: Path) -> dict:
    """Our motion operator vs Data-Juicer's on the same whole-file clips, both timed in this run."""
    import numpy as np

    whole = [c for c in clips if c["whole"]]
    views = [decode(c) for c in whole]
    motion = ops["motion"]
    ours_op, ours_e2e = [], []
    for _ in range(rounds):
        cpu, wall, _ = timed(motion.score_row, views)
        ours_op.append((cpu, wall))
        cpu, wall, _ = timed(lambda c: motion.score_row(decode(c)), whole)
        ours_e2e.append((cpu, wall))
    frames_path = workdir / "dj_motion_frames.npz"
    arr = np.empty(len(views), dtype=object)
    for i, v in enumerate(views):
        arr[i] = v["motion_frames"]
    np.savez(frames_path, motion_frames=arr)
    spec = workdir / "dj_spec.json"
    spec.write_text(json.dumps({"videos": [c["path"] for c in whole], "rounds": rounds, "frames": str(frames_path)}))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([dj_python, __file__, "--dj-worker", str(spec)], capture_output=True, text=True, env=env,
                          timeout=1800)
    if proc.returncode != 0:
        return {"error": proc.stderr[-3000:]}
    dj = json.loads(proc.stdout.strip().splitlines()[-1])
    n = len(whole)

    def med(runs, i):
        return statistics.median(r[i] for r in runs)

    res = {
        "clips": n,
        "data_juicer_version": dj["version"],
        "dj_operator": {"clips_per_s_cpu": n / med(dj["runs"], 0), "clips_per_s_wall": n / med(dj["runs"], 1)},
        "ours_operator_on_decoded_views": {"clips_per_s_cpu": n / med(ours_op, 0),
                                           "clips_per_s_wall": n / med(ours_op, 1)},
        "ours_decode_plus_motion": {"clips_per_s_cpu": n / med(ours_e2e, 0), "clips_per_s_wall": n / med(ours_e2e, 1)},
        "dj_operator_without_flow_tolist": {"clips_per_s_cpu": n / med(dj["nolist_runs"], 0),
                                            "clips_per_s_wall": n / med(dj["nolist_runs"], 1)},
        "dj_farneback_on_our_motion_frames": {"clips_per_s_cpu": n / med(dj["flow_runs"], 0),
                                              "clips_per_s_wall": n / med(dj["flow_runs"], 1)},
        "dj_scores": dict(zip((c["file"] for c in whole), dj["scores"])),
    }
    for key in ("ours_operator_on_decoded_views", "ours_decode_plus_motion", "dj_operator_without_flow_tolist",
                "dj_farneback_on_our_motion_frames"):
        res[key]["ratio_vs_dj_operator_cpu"] = res[key]["clips_per_s_cpu"] / res["dj_operator"]["clips_per_s_cpu"]
    return res


# -- calibration ----------------------------------------------------------------------------------------------------

def char_recall(truth: str, read: str) -> float:
    """Share of the truth's characters (whitespace ignored) matched in order in the reading."""
    import difflib

    t, r = "".join(truth.split()), "".join(read.split())
    return sum(b.size for b in difflib.SequenceMatcher(None, t, r, autojunk=False).get_matching_blocks()) / len(t)


def calibrate(clips: list[dict], ops: dict) -> dict:
    """Tier confusion matrix, OCR recall per language, watermark/NSFW/quality scores per sample clip."""
    from curation.schema import MOTION_TIERS

    rows = []
    for c in clips:
        v = decode(c)
        row = {"file": c["file"], "start": c.get("start"), "tier": c["tier"], "watermark": c["watermark"],
               "subtitle": c["subtitle"], "lang": c["lang"]}
        for name, op in ops.items():
            row.update({f"out_{k}": val for k, val in op.score_row(v).items()})
        rows.append(row)
    confusion = {t: {p: 0 for p in MOTION_TIERS} for t in MOTION_TIERS}
    graded = [r for r in rows if r["tier"]]
    for r in graded:
        confusion[r["tier"]][r["out_motion_tier"]] += 1
    accuracy = sum(r["tier"] == r["out_motion_tier"] for r in graded) / len(graded)
    recall = {}
    for r in rows:
        if r["subtitle"]:
            recall.setdefault(r["lang"], []).append(char_recall(r["subtitle"], r["out_ocr_text"]))
    logos = [r["out_watermark_score"] for r in rows if r["watermark"]]
    clean = [r["out_watermark_score"] for r in rows if not r["watermark"] and r.get("out_watermark_score") is not None]
    return {
        "tier_accuracy": accuracy, "tier_confusion": confusion, "graded_clips": len(graded),
        "ocr_char_recall": {k: statistics.mean(v) for k, v in recall.items()},
        "watermark_min_logo": min(logos), "watermark_max_clean": max(clean),
        "nsfw_max": max(r["out_nsfw_score"] for r in rows),
        "rows": rows,
    }


# -- flow engine choice ---------------------------------------------------------------------------------------------

def flow_comparison(repeats: int = 30) -> list[dict]:
    """Speed and end-point error of DIS presets and Farneback on 320x180 frames shifted by known amounts."""
    import cv2
    import numpy as np
    import skimage.data

    big = cv2.cvtColor(cv2.resize(skimage.data.coffee(), (720, 480), interpolation=cv2.INTER_AREA),
                       cv2.COLOR_RGB2GRAY)
    h, w = 180, 320

    def window(dx: float, dy: float) -> np.ndarray:
        m = np.float32([[1, 0, -200 - dx], [0, 1, -150 - dy]])
        return cv2.warpAffine(big, m, (w, h), flags=cv2.INTER_LINEAR)

    def dis(preset, finest=None, vr=None):
        d = cv2.DISOpticalFlow_create(preset)
        if finest is not None:
            d.setFinestScale(finest)
        if vr is not None:
            d.setVariationalRefinementIterations(vr)
        return lambda a, b: d.calc(a, b, None)

    engines = {
        "dis_ultrafast": dis(cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST),
        "dis_fast": dis(cv2.DISOPTICAL_FLOW_PRESET_FAST),
        "dis_medium": dis(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM),
        "dis_medium_fs2_vr0 (ours)": dis(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM, 2, 0),
        "farneback (Data-Juicer settings)": lambda a, b: cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 3, 15, 3, 5,
                                                                                    1.2, 0),
    }
    shifts = [(3, 0), (12, 5), (25, -10), (40, 0)]
    a = window(0, 0)
    out = []
    for name, fn in engines.items():
        epe = []
        for dx, dy in shifts:
            flow = fn(a, window(-dx, -dy))  # content moves by (dx, dy)
            valid = flow[20:-20, 45:-45]  # away from the borders where content enters the frame
            epe.append(float(np.hypot(valid[..., 0] - dx, valid[..., 1] - dy).mean()))
        b = window(-12, -5)
        c0 = time.process_time()
        for _ in range(repeats):
            fn(a, b)
        out.append({"engine": name, "ms_per_pair_cpu": 1000 * (time.process_time() - c0) / repeats,
                    "epe_px": dict(zip([f"{dx},{dy}" for dx, dy in shifts], epe))})
    return out


# -- report ---------------------------------------------------------------------------------------------------------

def fold_comparison(rounds: int = 15) -> list[dict]:
    """PP-OCRv4 detector (one 288x480 frame) and recogniser (2 crops at 48x320): the shipped graphs against the ones
    rewritten by `operators.models.onnxfold`, single-threaded, timed interleaved (median CPU ms), with the largest output
    difference on a real photo."""
    import cv2
    import numpy as np
    import onnxruntime as ort
    import rapidocr_onnxruntime
    import skimage.data

    from operators.models.onnxfold import fold_affine_graph

    folder = Path(rapidocr_onnxruntime.__file__).parent / "models"
    out = []
    for name, shape in (("ch_PP-OCRv4_det_infer.onnx", (1, 3, 288, 480)),
                        ("ch_PP-OCRv4_rec_infer.onnx", (2, 3, 48, 320))):
        shipped = (folder / name).read_bytes()
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        sessions = [ort.InferenceSession(m, opts, providers=["CPUExecutionProvider"])
                    for m in (shipped, fold_affine_graph(shipped)[0])]
        n, _, h, w = shape
        photo = cv2.resize(skimage.data.astronaut(), (w, h)).astype(np.float32) / 127.5 - 1.0
        x = {sessions[0].get_inputs()[0].name: np.ascontiguousarray(np.repeat(photo.transpose(2, 0, 1)[None], n, 0))}
        times: list[list[float]] = [[], []]
        for _ in range(rounds):
            for i, sess in enumerate(sessions):
                c0 = time.process_time()
                sess.run(None, x)
                times[i].append(time.process_time() - c0)
        diff = float(np.abs(sessions[0].run(None, x)[0] - sessions[1].run(None, x)[0]).max())
        out.append({"model": name, "input": list(shape), "shipped_ms": 1000 * statistics.median(times[0]),
                    "rewritten_ms": 1000 * statistics.median(times[1]), "max_abs_diff": diff})
    return out


def markdown(res: dict) -> str:
    """A readable summary of the JSON result."""
    lines = []
    for key, title in (("throughput", f"sample clips (seed {res['seed']})"),
                       ("throughput_hd", "5 s clips at 720p and 1080p")):
        t = res.get(key)
        if not t:
            continue
        lines += [f"{title}: {t['clips']} clips", "",
                  "| stage | CPU ms/clip | clips/s (CPU, 1 core) | wall ms/clip | × decode floor (CPU) |",
                  "|---|---:|---:|---:|---:|"]
        for k in [x for x in t if isinstance(t[x], dict)]:
            s = t[k]
            ratio = s["cpu_ms_per_clip"] / t["decode"]["cpu_ms_per_clip"]
            lines.append(f"| {k} | {s['cpu_ms_per_clip']:.1f} | {s['clips_per_s_cpu']:.1f} | "
                         f"{s['wall_ms_per_clip']:.1f} | {ratio:.2f} |")
        lines.append("")
    dj = res.get("data_juicer")
    if dj and "error" not in dj:
        lines += ["", f"Data-Juicer {dj['data_juicer_version']} side by side ({dj['clips']} whole-file clips):",
                  "| what | clips/s (CPU) | × DJ operator |", "|---|---:|---:|",
                  "| DJ video_motion_score_filter (own decode + Farneback) | "
                  f"{dj['dj_operator']['clips_per_s_cpu']:.1f} | 1.00 |"]
        for k in ("ours_operator_on_decoded_views", "ours_decode_plus_motion", "dj_operator_without_flow_tolist",
                  "dj_farneback_on_our_motion_frames"):
            lines.append(f"| {k} | {dj[k]['clips_per_s_cpu']:.1f} | {dj[k]['ratio_vs_dj_operator_cpu']:.2f} |")
    elif dj:
        lines += ["", "Data-Juicer run failed:", "```", dj["error"], "```"]
    cal = res.get("calibration")
    if cal:
        from curation.schema import MOTION_TIERS

        lines += ["", f"tier accuracy: {cal['tier_accuracy']:.3f} over {cal['graded_clips']} clips", "",
                  "| truth \\ predicted | " + " | ".join(MOTION_TIERS) + " |", "|---" * (len(MOTION_TIERS) + 1) + "|"]
        for tt in MOTION_TIERS:
            lines.append(f"| {tt} | " + " | ".join(str(cal["tier_confusion"][tt][p]) for p in MOTION_TIERS) + " |")
        lines.append(f"\nOCR character recall: {cal['ocr_char_recall']}")
        lines.append(f"watermark: lowest logo clip {cal['watermark_min_logo']:.3f}, highest clean clip "
                     f"{cal['watermark_max_clean']:.3f}; NSFW max over all samples {cal['nsfw_max']:.3f}")
    if res.get("flow"):
        lines += ["", "| flow engine | ms/pair (CPU) | EPE px at shifts " + ", ".join(res["flow"][0]["epe_px"]) + " |",
                  "|---|---:|---|"]
        for f in res["flow"]:
            lines.append(f"| {f['engine']} | {f['ms_per_pair_cpu']:.2f} | "
                         + ", ".join(f"{v:.2f}" for v in f["epe_px"].values()) + " |")
    if res.get("fold"):
        lines += ["", "| PP-OCRv4 graph | input | shipped ms (CPU) | rewritten ms (CPU) | max abs output diff |",
                  "|---|---|---:|---:|---:|"]
        for f in res["fold"]:
            lines.append(f"| {f['model']} | {'x'.join(map(str, f['input']))} | {f['shipped_ms']:.1f} | "
                         f"{f['rewritten_ms']:.1f} | {f['max_abs_diff']:.1e} |")
    return "\n".join(lines)


def main() -> None:
    """Command line entry point."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=Path, default=ROOT / "bench/_out/samples0")
    ap.add_argument("--make", type=int, default=None, metavar="SEED", help="(re)make the sample set with this seed")
    ap.add_argument("--seed", type=int, default=None, help="the seed --samples was made with (for the report)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dj", default=None, metavar="PYTHON", help="python of the Data-Juicer environment")
    ap.add_argument("--calibrate", action="store_true")
    ap.add_argument("--flow", action="store_true")
    ap.add_argument("--fold", action="store_true", help="PP-OCR graphs: shipped vs operators.models.onnxfold rewrite")
    ap.add_argument("--no-throughput", action="store_true")
    ap.add_argument("--every", action="store_true", help="also time OCR / NSFW on 3 frames of every clip")
    ap.add_argument("--hd", action="store_true", help="also time 720p/1080p 5 s clips (decode ratio at real sizes)")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--dj-worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.dj_worker:
        dj_worker(args.dj_worker)
        return
    sys.path.insert(0, str(ROOT))
    import cv2

    cv2.setNumThreads(1)
    if args.make is not None:
        from curation.testing.samples import make_samples

        make_samples(args.samples, args.make)
    seed = args.make if args.make is not None else args.seed
    res: dict = {"seed": seed, "samples": str(args.samples), "cpu": os.cpu_count(), "rounds": args.rounds}
    ops = build_operators(every=args.every)
    clips = sample_clips(args.samples)
    if not args.no_throughput:
        res["throughput"] = throughput(clips, ops, args.rounds)
    if args.hd:
        hd_dir = ROOT / "bench/_out/hd"
        hd_dir.mkdir(parents=True, exist_ok=True)
        res["throughput_hd"] = throughput(make_hd_clips(hd_dir), ops, args.rounds)
    if args.dj:
        work = (args.out.parent if args.out else ROOT / "bench/_out")
        work.mkdir(parents=True, exist_ok=True)
        res["data_juicer"] = data_juicer_side_by_side(clips, ops, args.dj, args.rounds, work)
    if args.calibrate:
        res["calibration"] = calibrate(sample_clips(args.samples, with_images=True),
                                       {k: v for k, v in ops.items() if "@" not in k})
    if args.flow:
        res["flow"] = flow_comparison()
    if args.fold:
        res["fold"] = fold_comparison()
    text = markdown(res)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=1, default=str))
        args.out.with_suffix(".md").write_text(text + "\n")


if __name__ == "__main__":
    main()
