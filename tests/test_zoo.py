"""The zoo, part 1: the MLPerf Tiny reference models, MobileNetV2 and MobileNetV3Small.

Every step on each net (tests/zoo_support.py says how); part 2 is tests/test_zoo_applications.py.
"""

from __future__ import annotations

import pytest
import zoo_support as zoo

pytestmark = pytest.mark.zoo

NETS = ["resnet8", "ds_cnn", "mobilenet_v1", "fc_autoencoder", "mobilenet_v2", "mobilenet_v3_small"]
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
