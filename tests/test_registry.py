"""nepenthe.pruning.registry: a method is one declaration. A sixth method, added here as a user would (its class with
@register_method in one module, its YAML group file), runs through train.py's config, is refused the settings it does
not honour, and shows in the analysis under its own label and colour."""

import pandas as pd
import pytest

import nepenthe
from analysis import plots, tables
from conftest import FAST, SYNTHETIC, compose_config
from nepenthe.config import load_run_config
from nepenthe.errors import ConfigError
from nepenthe.pruning.methods import Method, PruningPlan, unit_nonzero
from nepenthe.pruning.registry import METHODS, register_method
from nepenthe.tracking import read_rounds


@pytest.fixture
def toy_method(tmp_path):
    """Registers "toy" for one test, with conf/pruning/toy.yaml in a search path of its own."""

    @register_method("Toy (first unit)", "tab:olive", rank=9)
    class FirstUnit(Method):
        """Prunes ``ratio`` of the first unit that has weights left, nothing else."""

        name = "toy"

        def plan(self, model, units, stats, history=()):
            for unit in units:
                left = unit_nonzero(model, unit)
                if left:
                    return PruningPlan(counts={unit.weights[0]: int(self.ratio * left)})
            return PruningPlan()

    (tmp_path / "conf" / "pruning").mkdir(parents=True)
    (tmp_path / "conf" / "pruning" / "toy.yaml").write_text("method: toy\n")
    yield [f"hydra.searchpath=[file://{tmp_path / 'conf'}]", "pruning=toy"]
    del METHODS["toy"]


def compose(*overrides):
    return load_run_config(compose_config(SYNTHETIC + FAST + list(overrides)))


def test_a_sixth_method_declared_in_one_module_runs_and_is_labelled(toy_method, run_fast):
    assert list(METHODS)[-1] == "toy" and compose(*toy_method).pruning.method == "toy"
    _, run_dir = run_fast(*toy_method, "stop.max_rounds=2", "collapse.enabled=false")
    exp, record = nepenthe.restore_run(run_dir, 2)
    first = exp.model.get_submodule(exp.units[0].weights[0])
    n = first.weight.numel()
    pruned = int(0.5 * n) + int(0.5 * (n - int(0.5 * n)))  # half of what is left, in each of the two rounds
    assert int((first.weight == 0).sum()) == pruned
    others = [exp.model.get_submodule(w).weight for u in exp.units[1:] for w in u.weights]
    assert all(int((w == 0).sum()) == 0 for w in others)
    assert [r.round for r in read_rounds(run_dir)] == [0, 1, 2] and record.sparsity > 0
    assert tables.label("method", "toy") == "Toy (first unit)"
    assert tables.method_order(["imp", "toy", "nepenthe"]) == ["nepenthe", "imp", "toy"]
    assert plots._colours(pd.DataFrame({"method": ["toy", "egp"]})) == {"egp": "tab:orange", "toy": "tab:olive"}


def test_a_method_refuses_what_it_does_not_honour(toy_method):
    with pytest.raises(ConfigError, match=r"^pruning.rounding='floor' applies to nepenthe, egp only; "
                                          r"pruning.method='toy' has no such option$"):
        compose(*toy_method, "pruning.rounding=floor")
    with pytest.raises(ConfigError, match=r"^pruning.ratio=0.3 does not apply to easier, which prunes by no ratio"):
        compose("pruning=easier", "pruning.ratio=0.3")
    with pytest.raises(ConfigError, match=r"^pruning method 'toy' is registered twice"):
        register_method("again", "black")(METHODS["toy"].cls)


def test_every_registered_method_has_its_yaml_and_its_defaults_once():
    from conftest import ROOT

    assert sorted(METHODS) == sorted(p.stem for p in (ROOT / "conf" / "pruning").glob("*.yaml"))
    for name, entry in METHODS.items():
        cfg = compose(f"pruning={name}")
        assert {k: getattr(cfg.pruning, k) for k in entry.option_names} == entry.defaults()  # written in by validation
        assert nepenthe.create_method(name).probe == entry.probe
    assert METHODS["egp"].defaults() == {"rounding": "floor"} and METHODS["nepenthe"].defaults() == {
        "rounding": "nearest"}
    assert METHODS["lacoot"].regularises_dense(METHODS["lacoot"].resolved({"lambda_reg": 0.0})) is False
    assert METHODS["lacoot"].regularises_dense(METHODS["lacoot"].resolved({})) is True
