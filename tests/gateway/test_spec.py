"""The gateway YAML: valid configs load, bad ones fail naming the field and the fix."""

from __future__ import annotations

import pytest

from studio.errors import StudioError
from studio.gateway.spec import DEFAULT_CONFIG, PriceSpec, load_gateway_spec, missing_key_envs


def test_the_shipped_config_loads():
    spec = load_gateway_spec(DEFAULT_CONFIG)
    assert "judge" in spec.group_names() and spec.key_envs() == {"OPENAI_API_KEY", "ANTHROPIC_API_KEY"}


def test_a_literal_key_is_refused():
    with pytest.raises(StudioError, match="literal API key, which is not allowed") as err:
        load_gateway_spec({"groups": [{"name": "g", "provider": "openai", "model": "gpt-4o",
                                       "api_key": "sk-live-123"}]})
    assert "api_key_env" in str(err.value) and "sk-live-123" not in str(err.value)


def test_a_key_in_api_key_env_is_refused_without_echoing_it():
    with pytest.raises(StudioError, match="environment variable name") as err:
        load_gateway_spec({"groups": [{"name": "g", "provider": "openai", "model": "gpt-4o",
                                       "api_key_env": "sk-live-1234567890"}]})
    assert "1234567890" not in str(err.value)


@pytest.mark.parametrize(("data", "named"), [
    ({"groups": [{"name": "g", "provider": "nope", "model": "m"}]}, "groups.0.provider"),
    ({"groups": [{"name": "g", "provider": "openai", "model": "m", "tempo": 1,
                  "api_key_env": "K"}]}, "tempo"),
    ({"groups": [{"name": "g", "provider": "hosted_vllm", "model": "m"}]}, "api_base"),
    ({"groups": [{"name": "g", "provider": "openai", "model": "m"}]}, "api_key_env"),
    ({"groups": [{"name": "g", "provider": "studio", "model": "tiny"}], "fallbacks": {"g": ["x"]}},
     "'x', which is not a group"),
    ({"router": {"num_retries": -1}}, "router.num_retries"),
])
def test_malformed_config_names_the_field(data, named):
    with pytest.raises(StudioError) as err:
        load_gateway_spec(data)
    assert named in str(err.value)


def test_malformed_yaml_file_names_the_line(tmp_path):
    path = tmp_path / "gateway.yaml"
    path.write_text("groups:\n  - name: [oops\n")
    with pytest.raises(StudioError, match="not valid YAML at line"):
        load_gateway_spec(path)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(StudioError, match="does not exist"):
        load_gateway_spec(tmp_path / "nope.yaml")


def test_missing_key_envs_names_unset_variables():
    spec = load_gateway_spec({"groups": [{"name": "g", "provider": "openai", "model": "m",
                                          "api_key_env": "GW_TEST_KEY"}]})
    assert missing_key_envs(spec, "g", {}) == ["GW_TEST_KEY"]
    assert missing_key_envs(spec, "g", {"GW_TEST_KEY": "x"}) == []


def test_price_per_token_and_per_gpu_hour():
    price = PriceSpec(input_per_1m_tokens_usd=1.0, output_per_1m_tokens_usd=2.0, gpu_hour_usd=3.6)
    assert price.cost(1_000_000, 500_000, latency_s=10) == pytest.approx(1.0 + 1.0 + 0.01)
