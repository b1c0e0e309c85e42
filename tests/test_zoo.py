"""The zoo, part 1: the MLPerf Tiny reference models, MobileNetV2 and MobileNetV3Small.

Every step on each net (tests/zoo_support.py says how); part 2 is tests/test_zoo_applications.py.
"""

from __future__ import annotations

import pytest
import zoo_support as zoo

pytestmark = pytest.mark.zoo

NETS = ["resnet8", "ds_cnn", "mobilenet_v1", "fc_autoencoder", "mobilenet_v2", "mobilenet_v3_small"]
globals().update(zoo.tests_for(NETS))
