"""One private local Ray per test module: own temp dir, no dashboard, stopped by the fixture."""

import tempfile

import pytest


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        pytest.fail("a Ray instance is already initialised in this process")
    tmp = tempfile.mkdtemp(prefix="t2ray-ray-", dir="/tmp")
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=tmp, log_to_driver=False,
             runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false"}})
    yield ray
    ray.shutdown()
