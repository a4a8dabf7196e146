"""benchmarks/report.py: tables built from run records, never typed by hand."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks import report

ROOT = Path(__file__).resolve().parents[1]
HOST = {"cpu": "Test CPU", "cores": 2, "avx512f": True, "amx": False, "torch": "2.13.0+cpu"}


def write_record(folder: Path, proto: str, fold: str, label: str, seed, per_subject: dict, held=(), unseen=None,
                 train_s=60.0, data_seed=None):
    """One seed record (seed an int) or an ensemble record (seed a list), as benchmark.py writes them."""
    scores = {"test": {"r": float(np.mean(list(per_subject.values()))), "per_subject": per_subject},
              "unseen": None if unseen is None else {"r": float(np.mean(list(unseen.values()))), "per_subject": unseen}}
    rec = {"protocol": proto, "fold": fold, "label": label, "model": label.split("-")[0],
           "git": {"commit": "abc1234def", "modified": False}, "host": HOST, "date": "2026-12-04T10:00:00+0000",
           "scores": scores}
    if isinstance(seed, list):
        rec.update(kind="ensemble", seeds=seed, train_s={})
        name = f"ensemble-{'-'.join(map(str, seed))}.json"
    else:
        rec.update(kind="seed", seed=seed, data_seed=seed if data_seed is None else data_seed, train_s=train_s,
                   train_config={"exclude_subjects": list(held), "data_seed": data_seed})
        name = f"seed-{seed}.json"
    path = folder / proto / fold / label / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rec))
    return path


def test_tables_follow_the_records_and_only_complete_folds_count(tmp_path):
    rec = tmp_path / "results"
    for label, base in (("linear", 0.10), ("ivlaai", 0.20)):
        for k, fold in enumerate(("fold1-S1-S2", "fold2-S3-S4")):
            subj = [f"S{2 * k + 1}", f"S{2 * k + 2}"]
            for seed in (1, 2, 3):
                write_record(rec, "heldout", fold, label, seed, {s: base + 0.01 * seed for s in subj},
                             unseen={s: base for s in subj})
            write_record(rec, "heldout", fold, label, [1, 2, 3], {s: base + 0.05 for s in subj},
                         unseen={s: base for s in subj})
    # vlaai has only one fold: the summary keeps the folds every model has, and says how many
    for seed in (1, 2, 3):
        write_record(rec, "heldout", "fold1-S1-S2", "vlaai", seed, {"S1": 0.3, "S2": 0.3})
    write_record(rec, "heldout", "fold1-S1-S2", "vlaai", [1, 2, 3], {"S1": 0.4, "S2": 0.4})
    idx = report.index(report.load_records(rec))
    row = report.model_row(idx["heldout"]["ivlaai"], ["fold1-S1-S2", "fold2-S3-S4"])
    assert row["per_seed"] == pytest.approx([0.21, 0.22, 0.23])
    assert row["sd"] == pytest.approx(0.01) and row["ensemble"] == pytest.approx(0.25)
    assert row["minutes_per_run"] == pytest.approx(1.0)
    table = report.summary_table(idx)
    assert "(1/4)" in table and "| 0.210 ± 0.010 (0.260) |" not in table
    assert "0.400" in table  # vlaai's one fold
    ours = report.protocol_table({"heldout": {k: v for k, v in idx["heldout"].items() if k != "vlaai"}}, "heldout")
    assert "0.220 ± 0.010 (0.250)" in ours and "fold1-S1-S2, fold2-S3-S4 (2 of 4)" in ours


def test_speech_cv_splits_new_and_seen_listeners(tmp_path):
    rec = tmp_path / "results"
    per = {"S1": 0.5, "S2": 0.1, "S3": 0.1, "S4": 0.1}  # S1 held out: new; the rest seen
    for seed in (1, 2):
        write_record(rec, "speechcv", "tf1-S1-S1", "ivlaai", seed, per, held=["S1"])
    write_record(rec, "speechcv", "tf1-S1-S1", "ivlaai", [1, 2], per)
    idx = report.index(report.load_records(rec))
    assert report.model_row(idx["speechcv"]["ivlaai"], ["tf1-S1-S1"], "new")["mean"] == pytest.approx(0.5)
    assert report.model_row(idx["speechcv"]["ivlaai"], ["tf1-S1-S1"], "seen")["mean"] == pytest.approx(0.1)


def test_seed_grid_splits_the_spread_into_its_sources(tmp_path):
    rec = tmp_path / "results"
    init = {1: 0.0, 2: 0.02, 3: -0.02}  # the initial weights move r; the data seed barely does
    data = {1: 0.0, 2: 0.001, 3: -0.001}
    for j in (1, 2, 3):
        for i in (1, 2, 3):
            r = 0.15 + init[i] + data[j]
            write_record(rec, "heldout", "fold4-S10-S12", f"ivlaai-data{j}", i, {"S10": r}, data_seed=j)
        write_record(rec, "heldout", "fold4-S10-S12", f"ivlaai-data{j}", [1, 2, 3], {"S10": 0.15})
    text = report.seed_study(report.index(report.load_records(rec)))
    assert "initial weights 100 %" in text or "initial weights 99 %" in text
    assert "window order and dropout masks 0 %" in text or "window order and dropout masks 1 %" in text


def test_render_replaces_only_marked_blocks_and_checks_markers(tmp_path):
    text = "a\n<!-- report:summary -->\nold\n<!-- /report:summary -->\nb\n"
    assert report.render(text, {"summary": "NEW"}) == "a\n<!-- report:summary -->\nNEW\n<!-- /report:summary -->\nb\n"
    with pytest.raises(report.ReportError, match="unknown report table 'nope'"):
        report.render("<!-- report:nope -->x<!-- /report:nope -->", {"summary": "x"}, "f.md")
    with pytest.raises(report.ReportError, match="do not pair up"):
        report.render("<!-- report:summary -->x", {"summary": "x"}, "f.md")


def test_the_committed_tables_match_the_committed_records():
    """README.md and docs/results.md say what results/ says: `python -m benchmarks.report --check`."""
    assert report.main(["--check"]) == 0


def test_a_broken_record_is_one_line_naming_it(tmp_path):
    bad = tmp_path / "heldout" / "f" / "m" / "seed-1.json"
    bad.parent.mkdir(parents=True)
    bad.write_text("{")
    with pytest.raises(SystemExit, match="seed-1.json: malformed JSON"):
        report.main([f"--records_dir={tmp_path}", "--check"])


def test_bf16_parity_pairs_seeds_and_applies_the_rule(tmp_path):
    rec = tmp_path / "results"
    for label, rs in (("vlaai", [0.10, 0.12, 0.14]), ("vlaai-bf16", [0.105, 0.12, 0.13])):
        for seed, r in zip((1, 2, 3), rs, strict=True):
            write_record(rec, "heldout", "fold4-S10-S12", label, seed, {"S10": r})
        write_record(rec, "heldout", "fold4-S10-S12", label, [1, 2, 3], {"S10": 0.13})
    text = report.bf16_parity(report.index(report.load_records(rec)))
    assert "+0.0050, +0.0000, -0.0100" in text and "| -0.0017 |" in text and "| yes |" in text
    assert report.bf16_parity({}).startswith("No bf16 records yet")


def test_tables_compare_seeds_1_to_3_and_growth_reads_the_larger_ensemble(tmp_path):
    rec = tmp_path / "results"
    for seed in range(1, 6):
        write_record(rec, "heldout", "f", "ivlaai", seed, {"S1": 0.1 * seed})
    write_record(rec, "heldout", "f", "ivlaai", [1, 2, 3], {"S1": 0.25})
    path = write_record(rec, "heldout", "f", "ivlaai", [1, 2, 3, 4, 5], {"S1": 0.35})
    big = json.loads(path.read_text())
    big["growth"] = {"1": {"r": 0.1}, "5": {"r": 0.35}}
    path.write_text(json.dumps(big))
    idx = report.index(report.load_records(rec))
    row = report.model_row(idx["heldout"]["ivlaai"], ["f"])
    assert row["seeds"] == [1, 2, 3] and row["ensemble"] == pytest.approx(0.25)
    assert "| 0.1000 | 0.3500 |" in report.seed_study(idx)


def test_the_seed_sd_is_within_a_fold_not_of_seeds_pooled_over_folds(tmp_path):
    """Seed 1 is the best on one fold and the worst on the other: pooled over the folds the seeds
    tie (sd 0), but a user training on either fold sees seeds 0.1 apart. The table shows that."""
    rec = tmp_path / "results"
    for fold, subj, scores in (("fold1-S1-S1", "S1", (0.3, 0.2, 0.1)), ("fold2-S2-S2", "S2", (0.1, 0.2, 0.3))):
        for seed, r in zip((1, 2, 3), scores, strict=True):
            write_record(rec, "heldout", fold, "ivlaai", seed, {subj: r})
        write_record(rec, "heldout", fold, "ivlaai", [1, 2, 3], {subj: 0.25})
    idx = report.index(report.load_records(rec))
    row = report.model_row(idx["heldout"]["ivlaai"], ["fold1-S1-S1", "fold2-S2-S2"])
    assert row["per_seed"] == pytest.approx([0.2, 0.2, 0.2])
    assert row["fold_sd"] == pytest.approx({"fold1-S1-S1": 0.1, "fold2-S2-S2": 0.1})
    assert row["sd"] == pytest.approx(0.1)
    assert "0.250 ± 0.100" in report.protocol_table(idx, "heldout")


def test_the_readme_seed_lines_name_each_fold_and_read_negative_ranges(tmp_path):
    rec = tmp_path / "results"
    for fold, subj, scores in (("fold1-S1-S1", "S1", (-0.04, 0.01, 0.05)), ("fold2-S2-S2", "S2", (0.1, 0.2, 0.3))):
        for seed, r in zip((1, 2, 3), scores, strict=True):
            write_record(rec, "heldout", fold, "vlaai", seed, {subj: r})
        write_record(rec, "heldout", fold, "vlaai", [1, 2, 3], {subj: 0.25})
    text = report.seeds_short(report.index(report.load_records(rec)), "vlaai")
    assert "fold1-S1-S1 -0.040 to 0.050; fold2-S2-S2 0.100 to 0.300" in text


def test_a_seed_grid_may_take_its_diagonal_from_the_plain_runs(tmp_path):
    """VLAAI's grid runs only data_seed != seed; the cells data_seed = seed are the plain runs of
    those seeds, and plain seeds outside the grid (growth runs) stay out of it."""
    rec = tmp_path / "results"
    for i in (1, 2, 3, 4, 5):
        write_record(rec, "heldout", "f", "vlaai", i, {"S10": 0.1 + 0.01 * i})
    for j in (1, 2, 3):
        others = [i for i in (1, 2, 3) if i != j]
        for i in others:
            write_record(rec, "heldout", "f", f"vlaai-data{j}", i, {"S10": 0.1 + 0.01 * i + 0.001 * j}, data_seed=j)
        write_record(rec, "heldout", "f", f"vlaai-data{j}", others, {"S10": 0.15})
    text = report.seed_study(report.index(report.load_records(rec)))
    assert "| 2 | 0.1210 | 0.1200 | 0.1230 | " in text  # (2, 2) from the plain seed-2 run
    assert "data seeds [1, 2, 3]" not in text and "are the plain VLAAI runs" in text
    assert "columns: data_seed (window order)" in text
