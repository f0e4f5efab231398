"""nepenthe.records: every record type round-trips, older records upgrade, unknown keys are refused, the docs are
the dataclasses, and the committed smoke records read back."""

import json
import math
from pathlib import Path

import pytest

from nepenthe.records import (RECORDS, SCHEMA_VERSION, CollapseResult, Cost, Costs, FailureStatus, RecordError,
                              RoundBrief, RoundRecord, ShippedNetwork, Summary, TrajectoryPoint, field_tables, flatten,
                              unflatten)
from nepenthe.tracking import read_rounds, read_status, read_summary

ROOT = Path(__file__).resolve().parent.parent


def a_round(r=1) -> RoundRecord:
    return RoundRecord(round=r, method="nepenthe", ratio=0.5, val_acc=88.5, test_acc=87.25, val_loss=0.4,
                       test_loss=0.41, train_acc=90.0, train_loss=0.3, epochs=3, pruned=120, plan={"conv1": 120},
                       frozen_units=["relu"], replaced_by_identity=["layers.0.0"], sparsity=0.5,
                       unit_sparsity={"relu": 0.25}, entropy={"relu": 0.0, "layers.0.0.relu1": 0.75},
                       neurons={"relu": {"neurons": 4, "always_on": 4, "always_off": 0, "switching": 0}},
                       zero_entropy_units=["relu"], k=1, N=2, weight_layers=7,
                       method_stats={"val_mswd": {"layers.0.0": 1.5}}, extra_scores={"top5": 99.0},
                       wall_time_s=12.5, elapsed_s=30.0)


def a_summary() -> Summary:
    dense, kept = a_round(0), a_round(2)
    cost = Cost(macs=100, macs_nonzero=60, params=10, params_nonzero=6, weight_layers_on_longest_path=8)
    small = Cost(macs=70, macs_nonzero=50, params=8, params_nonzero=6, weight_layers_on_longest_path=7)
    collapse = CollapseResult(merge="cost", input_shape=[4, 1, 28, 28], tolerance=1e-4, before=cost, after=small,
                              units=[{"unit": "relu", "action": "identity"}], removed_layers=["conv1"],
                              operations=[{"op": "fold_batchnorm", "exact": True}], max_abs_diff=1e-6,
                              test_acc=87.25, val_acc=88.5, latency_ms={"eager": {"collapsed": {"batch_1": 0.5}}},
                              latency_iqr_ms={"eager": {"collapsed": {"batch_1": 0.01}}}, latency_repeats=5,
                              latency_threads=2, latency_device="cpu", latency_precision="fp32", file="collapsed.pt2",
                              runtimes={"eager": "ok", "onnxruntime": "not measured: not installed"},
                              approximate=ShippedNetwork(cost=small, test_acc=86.0, val_acc=87.0, relative_diff=0.02,
                                                         operations=[{"op": "merge", "exact": False}]),
                              finetuned=ShippedNetwork(cost=small, test_acc=87.0, val_acc=88.0, epochs=2,
                                                       val_acc_before=87.0, test_acc_before=86.0))
    return Summary(stop_reason="max_rounds", rounds_completed=2, kept_round=2, dense=RoundBrief.of(dense),
                   kept=RoundBrief.of(kept), k=1, N=2, depth="1/2", zero_entropy_units=["relu"],
                   cost=Costs(dense=cost, kept=cost, collapsed=small),
                   trajectory={"0": TrajectoryPoint.of(dense), "2": TrajectoryPoint.of(kept)}, collapse=collapse,
                   config_hash="ab" * 8, device="cpu", wall_time_s=99.0, versions={"torch": "2.14.1"})


@pytest.mark.parametrize("record", [a_round(), a_summary(), a_summary().collapse, a_summary().cost,
                                    FailureStatus(error="x", type="ValueError", when="2026-11-30T00:00:00+00:00"),
                                    FailureStatus(error="killed by the cluster", type="CANCELLED",
                                                  written_by="submitter", job_id="17_0")],
                         ids=["round", "summary", "collapse", "costs", "failure", "failure_by_submitter"])
def test_every_record_type_round_trips_through_json(record):
    data = json.loads(json.dumps(record.to_dict()))
    again = type(record).from_dict(data)
    assert again == record and again.to_dict() == record.to_dict()
    if record.TOP_LEVEL:
        assert data["schema"] == SCHEMA_VERSION


def test_a_schema_1_round_record_is_upgraded():
    old = {"round": 3, "method": "easier", "ratio": 0.5, "val_acc": 80.0, "test_acc": 79.0, "k": 2, "N": 7,
           "linearized": ["relu", "layers.0.0.relu1"], "top5": 97.5, "sparsity": 0.0}
    record = RoundRecord.from_dict(old)
    assert record.replaced_by_identity == ["relu", "layers.0.0.relu1"]
    assert record.extra_scores == {"top5": 97.5} and record.k == 2 and record.method == "easier"
    assert record.to_dict()["schema"] == SCHEMA_VERSION and "linearized" not in record.to_dict()
    old = CollapseResult.from_dict({"merge": "cost", "input_shape": [2, 1, 8, 8], "tolerance": 1e-4,
                                    "uncollapsed_test_acc": 81.5, "latency_ms": {"collapsed": {"batch_1": 0.7}}})
    assert old.kept_test_acc == 81.5 and old.latency_ms == {"eager": {"collapsed": {"batch_1": 0.7}}}  # eager only


def test_unknown_keys_a_missing_required_key_and_a_newer_schema_are_refused():
    with pytest.raises(RecordError, match=r"RoundRecord has unknown key\(s\) val_accc; known: "):
        RoundRecord.from_dict({"schema": 2, "round": 1, "val_accc": 3.0})
    with pytest.raises(RecordError, match="RoundRecord lacks the required key 'round'"):
        RoundRecord.from_dict({"schema": 2, "val_acc": 3.0})
    with pytest.raises(RecordError, match="Summary has schema 4, newer than this nepenthe reads"):
        Summary.from_dict({"schema": 4})
    # a W&B summary also holds the last round's keys: read leniently there, and only there
    lenient = Summary.from_dict({"schema": 2, "status": "complete", "sparsity": 0.5, "plan": {}}, strict=False)
    assert lenient.status == "complete"


def test_flatten_and_unflatten_are_inverse_on_nested_records():
    data = a_round().to_dict()
    flat = flatten(data)
    assert flat["entropy/layers.0.0.relu1"] == 0.75 and flat["method_stats/val_mswd/layers.0.0"] == 1.5
    back = unflatten(flat)
    assert back["entropy"] == data["entropy"] and back["neurons"] == data["neurons"]
    assert "frozen_units" not in flat  # lists are not W&B chart values


def test_a_nan_accuracy_survives_the_round_trip():
    record = RoundRecord(round=0, val_acc=math.nan)
    assert math.isnan(RoundRecord.from_dict(json.loads(json.dumps(record.to_dict()))).val_acc)


def test_the_design_doc_shows_the_fields_of_the_dataclasses_and_nothing_else():
    doc = (ROOT / "docs" / "DESIGN.md").read_text()
    start, end = "<!-- records: python -m nepenthe.records -->\n", "<!-- end records -->"
    assert start in doc and end in doc, "docs/DESIGN.md lacks the generated records section"
    shown = doc[doc.index(start) + len(start):doc.index(end)]
    assert shown == field_tables(), "docs/DESIGN.md is out of date: paste `python -m nepenthe.records` there"
    for cls in RECORDS:
        assert f"`{cls.__name__}`" in shown


def test_a_schema_2_summary_reads_its_final_and_uncollapsed_names_as_kept():
    summary = a_summary().to_dict()
    old = {**{k: v for k, v in summary.items() if k not in ("kept_round", "kept")}, "schema": 2,
           "final_round": summary["kept_round"], "final": summary["kept"],
           "cost": {"dense": summary["cost"]["dense"], "final": summary["cost"]["kept"],
                    "collapsed": summary["cost"]["collapsed"]}}
    collapse = old["collapse"] = {**summary["collapse"], "schema": 2}  # collapse.json stands alone: its own schema
    collapse["latency_ms"] = {"eager": {"uncollapsed": {"batch_1": 2.0}, "collapsed": {"batch_1": 1.0}},
                              "onnxruntime": {"uncollapsed": {"batch_1": 0.5}, "bn_folded": {"batch_1": 0.4}}}
    collapse["latency_iqr_ms"] = {"eager": {"uncollapsed": {"batch_1": 0.1}}}
    del collapse["kept_test_acc_fp32"], collapse["kept_val_acc_fp32"]
    collapse.update(uncollapsed_test_acc_fp32=88.5, uncollapsed_val_acc_fp32=89.0)
    read = Summary.from_dict(json.loads(json.dumps(old)))
    assert read.kept_round == 2 and read.kept == a_summary().kept and read.cost == a_summary().cost
    assert read.collapse.latency_ms == {"eager": {"kept": {"batch_1": 2.0}, "collapsed": {"batch_1": 1.0}},
                                        "onnxruntime": {"kept": {"batch_1": 0.5}, "bn_folded": {"batch_1": 0.4}}}
    assert read.collapse.latency_iqr_ms == {"eager": {"kept": {"batch_1": 0.1}}}
    assert (read.collapse.kept_test_acc_fp32, read.collapse.kept_val_acc_fp32) == (88.5, 89.0)
    with pytest.raises(RecordError, match="unknown key"):  # schema 3 has no "final": the upgrade is for older ones
        Summary.from_dict({**old, "schema": 3})


def test_a_runs_csv_written_before_the_rename_reads_with_this_versions_columns(tmp_path):
    import pandas as pd

    from analysis.rows import COLUMNS, read_runs

    old = {c: [1.0] for c in ("latency_ms_b1_uncollapsed", "latency_iqr_ms_bn_uncollapsed",
                              "latency_ms_b1_uncollapsed_onnxruntime", "latency_ms_b1_collapsed")}
    pd.DataFrame({"run_id": ["r"], "is_final": [True], **old}).to_csv(tmp_path / "runs.csv", index=False)
    frame = read_runs(tmp_path / "runs.csv")
    assert list(frame.columns) == ["run_id", "is_kept", "latency_ms_b1_kept", "latency_iqr_ms_bn_kept",
                                   "latency_ms_b1_kept_onnxruntime", "latency_ms_b1_collapsed"]
    assert set(frame.columns) <= set(COLUMNS)


@pytest.mark.parametrize("results, count", [
    ("smoke", 10), ("fashion_mnist_resnet18", 10), ("fashion_mnist_swin_t", 10), ("fashion_mnist_mobilenetv2", 10),
    ("fashion_mnist_resnet18_frontier", 14),  # five methods x two seeds; the frontier: 7 settings x two seeds
])
def test_the_committed_records_read_back_as_typed_records_and_agree_with_their_runs_csv(results, count):
    from analysis.rows import base_method, read_runs

    folder = ROOT / "experiments" / "results" / results
    if not (folder / "records").is_dir():
        pytest.skip(f"the committed {results} records are not in this checkout")
    runs = sorted(p.parent for p in (folder / "records").rglob("summary.json"))
    assert len(runs) == count
    table = read_runs(folder / "runs.csv")
    final = table[table["is_kept"]]
    final = final.set_index(final["run_id"].map(lambda run_id: Path(run_id).name))  # a run's folder names it
    assert final.index.is_unique and len(final) == count
    for run in runs:
        summary = read_summary(run)
        rounds = read_rounds(run)
        assert [r.round for r in rounds] == list(range(len(rounds)))
        assert summary.kept_round in [r.round for r in rounds]
        assert summary.kept.test_acc == rounds[summary.kept_round].test_acc
        assert summary.collapse.after.weight_layers_on_longest_path <= summary.cost.dense.weight_layers_on_longest_path
        assert read_status(run) is None
        row = final.loc[run.name]  # the tables come from these records
        assert (row["seed"], base_method(row["method"])) == (int(run.name.rsplit("seed=", 1)[1]), rounds[0].method)
        assert (row["kept_round"], row["test_acc"], row["k"]) == (summary.kept_round, summary.kept.test_acc,
                                                                 summary.kept.k)
        assert row["weight_layers_collapsed"] == summary.collapse.after.weight_layers_on_longest_path
