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
globals().update(zoo.tests_for(NETS))
