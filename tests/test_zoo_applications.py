"""The zoo, part 2: the larger keras.applications nets.

EfficientNetB0 through every step; the heaviest (zoo_support.HEAVY) through the structural step
(trace, groups, exact shrink); benchmarks/survey_zoo.py takes them through every step.
"""

from __future__ import annotations

import pytest
import zoo_support as zoo

pytestmark = pytest.mark.zoo

NETS = ["efficientnet_b0", "mobilenet_v3_large", "efficientnet_v2_b0", "resnet50_v2", "densenet121",
        "nasnet_mobile"]
LIGHT = [n for n in NETS if n not in zoo.HEAVY]


@pytest.mark.parametrize("name", LIGHT)
def test_ptq_int8_micro_and_edgetpu(name, tmp_path):
    zoo.ptq_int8_micro_and_edgetpu(name, tmp_path)


@pytest.mark.parametrize("name", NETS)
def test_channel_pruning_and_shrink_are_exact(name, tmp_path):
    zoo.channel_pruning_and_shrink_are_exact(name, tmp_path)


@pytest.mark.parametrize("name", LIGHT)
def test_two_four_pruning_exports_to_int8(name, tmp_path):
    zoo.two_four_pruning_exports_to_int8(name, tmp_path)


@pytest.mark.parametrize("name", LIGHT)
def test_qat_with_the_nets_own_head(name, tmp_path):
    zoo.qat_with_the_nets_own_head(name, tmp_path)


@pytest.mark.parametrize("name", LIGHT)
def test_bayesian_prune_to_and_shrink(name):
    zoo.bayesian_prune_to_and_shrink(name)
