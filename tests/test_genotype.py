import json

import pytest
import torch

import darts_sg
from darts_sg.model.genotype import Genotype, GenotypeError, derive_cell, derive_genotype, load_genotype, parse_legacy
from darts_sg.model.ops import CLASSIC_PRIMITIVES

DARTS_V2_LEGACY = (
    "Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('sep_conv_3x3', 1), "
    "('sep_conv_3x3', 1), ('skip_connect', 0), ('skip_connect', 0), ('dil_conv_3x3', 2)], normal_concat=[2, 3, 4, 5], "
    "reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 1), ('max_pool_3x3', 0), "
    "('skip_connect', 2), ('skip_connect', 2), ('max_pool_3x3', 1)], reduce_concat=range(2, 6))"
)


def test_legacy_string_matches_shipped_json():
    assert parse_legacy(DARTS_V2_LEGACY) == load_genotype("darts_v2") == load_genotype("DARTS_V2")


# pt.darts (khanrc) prints one list of (op, input) pairs per node.
DARTS_V2_PT_DARTS = (
    "Genotype(normal=[[('sep_conv_3x3', 0), ('sep_conv_3x3', 1)], [('sep_conv_3x3', 0), ('sep_conv_3x3', 1)], "
    "[('sep_conv_3x3', 1), ('skip_connect', 0)], [('skip_connect', 0), ('dil_conv_3x3', 2)]], normal_concat=range(2, 6), "
    "reduce=[[('max_pool_3x3', 0), ('max_pool_3x3', 1)], [('skip_connect', 2), ('max_pool_3x3', 1)], "
    "[('max_pool_3x3', 0), ('skip_connect', 2)], [('skip_connect', 2), ('max_pool_3x3', 1)]], reduce_concat=range(2, 6))"
)


def test_pt_darts_nested_legacy_string_is_parsed(tmp_path):
    assert parse_legacy(DARTS_V2_PT_DARTS) == load_genotype("darts_v2")
    path = tmp_path / "genotype.txt"
    path.write_text(DARTS_V2_PT_DARTS + "\n")
    assert load_genotype(str(path)) == load_genotype("darts_v2")


@pytest.mark.parametrize(
    "text, message",
    [
        ("Genotype(normal=[[('sep_conv_3x3', 0)], [('sep_conv_3x3', 0), ('sep_conv_3x3', 1)]], normal_concat=range(2, 4), "
         "reduce=[[('max_pool_3x3', 0), ('max_pool_3x3', 1)], [('max_pool_3x3', 0), ('max_pool_3x3', 1)]], "
         "reduce_concat=range(2, 4))", "normal node 0 has 1 incoming edges"),
        ("Genotype(normal=[[('sep_conv_3x3', 0), __import__('os')]], normal_concat=range(2, 3), reduce=[], reduce_concat=[2])",
         "not allowed"),
        ("Genotype(normal=[[('sep_conv_3x3', 0), ('sep_conv_3x3', 1)], ('skip_connect', 0)], normal_concat=range(2, 3), "
         "reduce=[], reduce_concat=[2])", "normal edge 0 must be an \\[op, input\\] pair"),
    ],
)  # fmt: skip
def test_bad_nested_legacy_strings_are_refused(text, message):
    with pytest.raises(GenotypeError, match=message):
        parse_legacy(text)


def test_named_genotypes_resolve_through_the_package():
    from darts_sg.model.genotype import available_genotypes, genotype_dir

    zoo = genotype_dir()
    assert {"DARTS_V1", "DARTS_V2"} <= set(available_genotypes())
    assert (zoo / "DARTS_V2.json").is_file()


def test_json_round_trip(tmp_path):
    genotype = load_genotype("DARTS_V1")
    path = tmp_path / "g.json"
    genotype.save(path)
    assert load_genotype(str(path)) == genotype
    assert parse_legacy(str(genotype)) == genotype


@pytest.mark.parametrize(
    "text, message",
    [
        ("Genotype(normal=__import__('os').system('true'))", "not allowed"),
        ("Genotype(normal=[('sep_conv_3x3', 0)] * 8)", "not allowed"),
        ("Genotype(normal=open('x'))", "not allowed"),
        ("Genotype(normal=[(x, 0)])", "not allowed"),
        ("exec('1')", "single Genotype"),
        ("Genotype(**{'normal': []})", "\\*\\*"),
        ("Genotype(normal=[", "not valid syntax"),
    ],
)
def test_legacy_strings_with_code_are_refused(text, message):
    with pytest.raises(GenotypeError, match=message):
        parse_legacy(text)


def _data(**changes):
    data = json.loads(load_genotype("darts_v2").to_json())
    data.update(changes)
    return data


@pytest.mark.parametrize(
    "data, message",
    [
        (_data(normal=[["sep_conv_3x3", 0]] * 7), "7 edges"),
        (_data(normal=[["conv_9x9", 0]] * 8), "unknown op 'conv_9x9'"),
        (_data(normal=[["sep_conv_3x3", 0]] * 7 + [["sep_conv_3x3", 6]]), "input 6 out of range for node 3"),
        (_data(normal=[["sep_conv_3x3", -1]] * 8), "out of range"),
        (_data(normal=[["none", 0]] * 8), "'none' cannot"),
        (_data(normal_concat=[2, 9]), "node 9 out of range"),
        (_data(normal=[["sep_conv_3x3", "0"]] * 8), "pair of a string and an integer"),
        ({"normal": []}, "missing"),
        ([], "JSON object"),
    ],
)
def test_invalid_genotypes(data, message):
    with pytest.raises(GenotypeError, match=message):
        Genotype.from_dict(data)


def test_op_outside_chosen_space():
    genotype = load_genotype("darts_v2")
    with pytest.raises(GenotypeError, match="not in the chosen space"):
        genotype.validate(["none", "max_pool_3x3", "skip_connect"])


def test_bad_files(tmp_path):
    (tmp_path / "bad.json").write_text('{"normal": [')
    with pytest.raises(GenotypeError, match="not valid JSON"):
        load_genotype(str(tmp_path / "bad.json"))
    with pytest.raises(GenotypeError, match="neither a file"):
        load_genotype(str(tmp_path / "missing.json"))


def test_derivation_keeps_two_strongest_non_none_edges():
    prims = CLASSIC_PRIMITIVES
    steps = 2  # edges: node0 <- {0, 1}; node1 <- {0, 1, 2}
    w = torch.full((5, len(prims)), 0.01)
    w[:, 0] = 0.9  # `none` dominates everywhere but must be ignored
    w[0, prims.index("sep_conv_3x3")] = 0.05
    w[1, prims.index("max_pool_3x3")] = 0.04
    w[2, prims.index("skip_connect")] = 0.02  # node 1, input 0: weakest
    w[3, prims.index("dil_conv_5x5")] = 0.06  # node 1, input 1
    w[4, prims.index("avg_pool_3x3")] = 0.07  # node 1, input 2: strongest
    edges = derive_cell(w, prims, steps)
    assert edges == (("sep_conv_3x3", 0), ("max_pool_3x3", 1), ("avg_pool_3x3", 2), ("dil_conv_5x5", 1))
    genotype = derive_genotype(w, w, prims, steps)
    assert genotype.normal_concat == (2, 3)
    genotype.validate()


def test_supernet_genotype_is_valid_and_in_space():
    model = darts_sg.build_supernet("sgblock", C=4, layers=3)
    with torch.no_grad():
        model.alpha_normal[:, model.primitives.index("sg_block")] += 5
        model.alpha_reduce[:, model.primitives.index("max_pool_3x3")] += 5
    genotype = model.genotype()
    genotype.validate(model.primitives)
    assert [op for op, _ in genotype.normal] == ["sg_block"] * 8
    assert [op for op, _ in genotype.reduce] == ["max_pool_3x3"] * 8
