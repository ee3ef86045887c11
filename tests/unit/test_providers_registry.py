"""Provider registration from fusebox.toml and the environment; keys: loading, masking, never leaking."""

from __future__ import annotations

import argparse
import json
import pickle
from pathlib import Path
from typing import Any

import httpx
import pytest

from producer import providers_cmd
from shared.config import ConfigError, FileConfig, ProviderConfig, Settings
from shared.errors import ProviderError
from shared.providers.anthropic import AnthropicProvider
from shared.providers.cohere import CohereProvider
from shared.providers.gemini import GeminiProvider
from shared.providers.http import HTTPProvider, Secret, load_secret, mask_key
from shared.providers.ollama import OllamaProvider
from shared.providers.openai import AzureOpenAIProvider, OpenAIProvider
from shared.providers.registry import ADAPTERS, build_providers
from shared.providers.simulated import SimulatedProvider
from shared.schema import ChatRequest

KEY = "sk-proj-Abc123Def456Ghi789Jkl012Mno345WXYZ"


def cfg(**providers: dict[str, Any]) -> FileConfig:
    return FileConfig.model_validate({"providers": providers})


def test_every_type_is_registered() -> None:
    expected = {
        "simulated", "openai", "azure", "groq", "openrouter", "xai", "together", "mistral", "deepseek",
        "lmstudio", "vllm", "huggingface", "anthropic", "gemini", "ollama", "cohere",
    }  # fmt: skip
    assert expected <= set(ADAPTERS)


def test_no_environment_means_only_simulated() -> None:
    providers = build_providers(FileConfig(), env={})
    assert list(providers) == ["simulated"]
    assert isinstance(providers["simulated"], SimulatedProvider)


ENV_CASES = [
    ({"OPENAI_API_KEY": KEY}, "openai", OpenAIProvider, "https://api.openai.com/v1"),
    (
        {"ANTHROPIC_API_KEY": "sk-ant-xxxxxxxxxxxxxxxx"},
        "anthropic",
        AnthropicProvider,
        "https://api.anthropic.com",
    ),
    (
        {"GEMINI_API_KEY": "AIzaxxxxxxxxxxxxxxxx"},
        "gemini",
        GeminiProvider,
        "https://generativelanguage.googleapis.com/v1beta",
    ),
    (
        {"GOOGLE_API_KEY": "AIzaxxxxxxxxxxxxxxxx"},
        "gemini",
        GeminiProvider,
        "https://generativelanguage.googleapis.com/v1beta",
    ),
    ({"GROQ_API_KEY": "gsk_xxxxxxxxxxxxxxxx"}, "groq", OpenAIProvider, "https://api.groq.com/openai/v1"),
    (
        {"OPENROUTER_API_KEY": "sk-or-xxxxxxxxxxxx"},
        "openrouter",
        OpenAIProvider,
        "https://openrouter.ai/api/v1",
    ),
    ({"XAI_API_KEY": "xai-xxxxxxxxxxxxxxxx"}, "xai", OpenAIProvider, "https://api.x.ai/v1"),
    ({"TOGETHER_API_KEY": "tgp_xxxxxxxxxxxxxx"}, "together", OpenAIProvider, "https://api.together.xyz/v1"),
    ({"MISTRAL_API_KEY": "mistral-xxxxxxxxxx"}, "mistral", OpenAIProvider, "https://api.mistral.ai/v1"),
    ({"DEEPSEEK_API_KEY": "sk-dsxxxxxxxxxxxxx"}, "deepseek", OpenAIProvider, "https://api.deepseek.com"),
    ({"COHERE_API_KEY": "co-xxxxxxxxxxxxxxxx"}, "cohere", CohereProvider, "https://api.cohere.com"),
    (
        {"HF_TOKEN": "hf_xxxxxxxxxxxxxxxxxx"},
        "huggingface",
        OpenAIProvider,
        "https://router.huggingface.co/v1",
    ),
    (
        {
            "HF_TOKEN": "hf_xxxxxxxxxxxxxxxxxx",
            "HF_BASE_URL": "https://abc.us-east-1.aws.endpoints.huggingface.cloud/v1",
        },
        "huggingface",
        OpenAIProvider,
        "https://abc.us-east-1.aws.endpoints.huggingface.cloud/v1",
    ),
    (
        {
            "AZURE_OPENAI_API_KEY": "azkeyxxxxxxxxxxxxx",
            "AZURE_OPENAI_ENDPOINT": "https://res.openai.azure.com/",
        },
        "azure",
        AzureOpenAIProvider,
        "https://res.openai.azure.com",
    ),
    ({"OLLAMA_BASE_URL": "http://127.0.0.1:11434"}, "ollama", OllamaProvider, "http://127.0.0.1:11434"),
    (
        {"LMSTUDIO_BASE_URL": "http://127.0.0.1:1234/v1"},
        "lmstudio",
        OpenAIProvider,
        "http://127.0.0.1:1234/v1",
    ),
    ({"VLLM_BASE_URL": "http://127.0.0.1:8000/v1"}, "vllm", OpenAIProvider, "http://127.0.0.1:8000/v1"),
    (
        {"OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": "https://proxy.example/v1"},
        "openai",
        OpenAIProvider,
        "https://proxy.example/v1",
    ),
]


@pytest.mark.parametrize(
    ("env", "name", "cls", "base_url"), ENV_CASES, ids=[c[1] + "-" + "-".join(c[0]) for c in ENV_CASES]
)
def test_environment_registers_provider(env: dict[str, str], name: str, cls: type, base_url: str) -> None:
    providers = build_providers(FileConfig(), env=env)
    assert set(providers) == {"simulated", name}
    p = providers[name]
    assert type(p) is cls
    assert (p.name, p.type, p.base_url) == (name, name, base_url)  # type: ignore[attr-defined]
    assert p.config.models == []  # bare model names reach it through prefix rules, not serves()


def test_azure_needs_both_key_and_endpoint_and_reads_api_version() -> None:
    assert "azure" not in build_providers(FileConfig(), env={"AZURE_OPENAI_API_KEY": "k" * 20})
    assert "azure" not in build_providers(
        FileConfig(), env={"AZURE_OPENAI_ENDPOINT": "https://r.openai.azure.com"}
    )
    env = {
        "AZURE_OPENAI_API_KEY": "k" * 20,
        "AZURE_OPENAI_ENDPOINT": "https://r.openai.azure.com",
        "AZURE_OPENAI_API_VERSION": "2025-01-01-preview",
    }
    p = build_providers(FileConfig(), env=env)["azure"]
    assert isinstance(p, AzureOpenAIProvider) and p.api_version == "2025-01-01-preview"


def test_empty_variables_register_nothing() -> None:
    assert list(build_providers(FileConfig(), env={"OPENAI_API_KEY": "", "OLLAMA_BASE_URL": "  "})) == [
        "simulated"
    ]


def test_configured_section_wins_over_the_environment() -> None:
    file = cfg(
        openai={
            "type": "openai",
            "base_url": "https://gateway.internal/v1",
            "models": ["gpt-4o"],
            "max_concurrency": 4,
        }
    )
    providers = build_providers(file, env={"OPENAI_API_KEY": KEY, "GROQ_API_KEY": "gsk_" + "x" * 20})
    assert set(providers) == {"simulated", "openai", "groq"}
    p = providers["openai"]
    assert p.base_url == "https://gateway.internal/v1"  # type: ignore[attr-defined]
    assert p.config.max_concurrency == 4 and p.serves("gpt-4o") and not p.serves("gpt-4.1")
    # the section names no api_key_env: the type's usual variable supplies the key
    assert p.key is not None and p.key.source == "OPENAI_API_KEY"  # type: ignore[attr-defined]


def test_named_sections_of_any_type_and_custom_key_env() -> None:
    file = cfg(
        fast={"type": "groq", "api_key_env": "MY_GROQ", "models": ["llama-3.3-70b-versatile"]},
        claude={"type": "anthropic", "options": {"default_max_tokens": 1000}},
    )
    providers = build_providers(file, env={"MY_GROQ": "gsk_" + "y" * 20})
    assert providers["fast"].type == "groq" and providers["fast"].key.reveal() == "gsk_" + "y" * 20  # type: ignore[attr-defined]
    assert providers["claude"].key is None  # type: ignore[attr-defined]
    assert providers["claude"].default_max_tokens == 1000  # type: ignore[attr-defined]


def test_unknown_type_is_a_config_error_naming_known_types() -> None:
    with pytest.raises(ConfigError, match=r"\[providers.x\] has unknown type 'bedrock' \(known: .*anthropic"):
        build_providers(cfg(x={"type": "bedrock"}), env={})


def test_simulated_provider_is_unchanged() -> None:
    file = FileConfig.model_validate(
        {
            "simulated": {"latency_ms": 5},
            "providers": {"sim2": {"type": "simulated", "options": {"failure_rate": 0.5}}},
        }
    )
    providers = build_providers(file, env={})
    assert isinstance(providers["simulated"], SimulatedProvider)
    assert providers["simulated"].sim.latency_ms == 5  # type: ignore[attr-defined]
    assert providers["sim2"].sim.failure_rate == 0.5  # type: ignore[attr-defined]
    assert not providers["simulated"].serves("gpt-4o")


async def test_injected_transport_reaches_every_http_provider() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(200, json={"data": []})

    env = {"OPENAI_API_KEY": KEY, "COHERE_API_KEY": "co-" + "z" * 20}
    providers = build_providers(FileConfig(), env=env, transport=httpx.MockTransport(handler))
    for p in providers.values():
        assert (await p.health()).ok
        await p.aclose()
    assert sorted(seen) == [
        "https://api.cohere.com/v1/models?page_size=1",
        "https://api.openai.com/v1/models",
    ]


# ---- keys ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "masked"),
    [
        (KEY, "sk-…WXYZ"),
        ("AIzaSyA1b2C3d4E5f6G7h8I9j0K1l2", "AIz…K1l2"),
        ("short-key", "****"),
        ("", ""),
        (None, ""),
    ],
)
def test_mask_key(key: str | None, masked: str) -> None:
    assert mask_key(key) == masked


def test_secret_never_shows_its_value() -> None:
    s = Secret(KEY, "OPENAI_API_KEY")
    assert s.reveal() == KEY
    for text in (str(s), repr(s), f"{s}", str([s]), str({"k": s})):
        assert KEY not in text and "sk-…WXYZ" in text
    with pytest.raises(TypeError):
        pickle.dumps(s)


def test_secret_file_is_read_once_at_build(tmp_path: Path) -> None:
    path = tmp_path / "openai.key"
    path.write_text(KEY + "\n")
    file = cfg(openai={"type": "openai", "api_key_file": str(path)})
    p = build_providers(file, env={"OPENAI_API_KEY": "sk-from-env-should-not-win-000"})["openai"]
    path.write_text("sk-changed-later-0000000000")  # no re-read per request
    assert p.key.reveal() == KEY  # type: ignore[attr-defined]
    assert p.key.source == f"file {path}"  # type: ignore[attr-defined]


async def test_missing_secret_file_is_a_missing_key_not_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "absent.key"
    p = build_providers(cfg(openai={"type": "openai", "api_key_file": str(path)}), env={})["openai"]
    assert p.key is None  # type: ignore[attr-defined]
    with pytest.raises(ProviderError) as ei:
        await p.chat(
            ChatRequest.from_body({"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]}),
            "gpt-4o",
        )
    assert ei.value.code == "missing_api_key" and f"api_key_file {path}" in ei.value.message


def test_load_secret_prefers_file_then_named_env_then_defaults(tmp_path: Path) -> None:
    env = {"A": "from-a-0000000000", "B": "from-b-0000000000"}
    assert load_secret(ProviderConfig(type="openai"), env, ("B",)).reveal() == "from-b-0000000000"  # type: ignore[union-attr]
    assert (
        load_secret(ProviderConfig(type="openai", api_key_env="A"), env, ("B",)).reveal()
        == "from-a-0000000000"
    )  # type: ignore[union-attr]
    assert load_secret(ProviderConfig(type="openai", api_key_env="C"), env, ("B",)) is None
    (tmp_path / "k").write_text("  from-file-000000  \n")
    file_cfg = ProviderConfig(type="openai", api_key_file=str(tmp_path / "k"), api_key_env="A")
    assert load_secret(file_cfg, env).reveal() == "from-file-000000"  # type: ignore[union-attr]


async def test_key_never_appears_in_reprs_errors_or_health() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        # a hostile upstream echoing the credentials it received
        return httpx.Response(
            401,
            json={
                "error": {
                    "message": f"bad key {request.headers['authorization']}",
                    "type": "invalid_request_error",
                    "code": "invalid_api_key",
                }
            },
        )

    p = build_providers(FileConfig(), env={"OPENAI_API_KEY": KEY}, transport=httpx.MockTransport(handler))[
        "openai"
    ]
    assert isinstance(p, HTTPProvider)
    with pytest.raises(ProviderError) as ei:
        await p.chat(
            ChatRequest.from_body({"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]}),
            "gpt-4o",
        )
    err = ei.value
    texts = [str(err), repr(err), err.message, repr(p), str(p), repr(p.key), str(p.key_info())]
    health = await p.health()
    texts.append(health.detail)
    for text in texts:
        assert KEY not in text, text
    assert p.key_info() == {"required": True, "set": True, "source": "OPENAI_API_KEY", "masked": "sk-…WXYZ"}
    await p.aclose()


# ---- fusebox providers --------------------------------------------------


async def test_collect_describes_each_provider() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if "groq" in request.url.host:
            return httpx.Response(
                503, json={"error": {"message": "Service Unavailable", "type": "internal_server_error"}}
            )
        return httpx.Response(200, json={"object": "list", "data": [{"id": "gpt-4o"}, {"id": "gpt-4o-mini"}]})

    file = cfg(
        openai={"type": "openai", "models": ["gpt-4o"], "rpm": 500, "tpm": 30000, "max_concurrency": 8}
    )
    env = {"OPENAI_API_KEY": KEY, "GROQ_API_KEY": "gsk_" + "q" * 20}
    providers = build_providers(file, env=env, transport=httpx.MockTransport(handler))
    rows = await providers_cmd.collect(providers)
    by_name = {r["name"]: r for r in rows}
    assert by_name["openai"] == {
        "name": "openai",
        "type": "openai",
        "base_url": "https://api.openai.com/v1",
        "models": ["gpt-4o"],
        "key": {"required": True, "set": True, "source": "OPENAI_API_KEY", "masked": "sk-…WXYZ"},
        "limits": {"max_concurrency": 8, "rpm": 500, "tpm": 30000},
        "health": {
            "ok": True,
            "latency_ms": by_name["openai"]["health"]["latency_ms"],
            "detail": "HTTP 200, 2 models listed",
        },
    }
    assert by_name["groq"]["health"]["ok"] is False
    assert "HTTP 503" in by_name["groq"]["health"]["detail"]
    assert by_name["simulated"]["health"] == {"ok": True, "latency_ms": 0.0, "detail": "in-process"}
    table = providers_cmd.render_table(rows)
    lines = table.splitlines()
    assert lines[0].split() == ["NAME", "TYPE", "BASE", "URL", "MODELS", "KEY", "LIMITS", "HEALTH"]
    openai_line = next(line for line in lines if line.startswith("openai"))
    assert "OPENAI_API_KEY sk-…WXYZ" in openai_line and "conc 8, rpm 500, tpm 30000" in openai_line
    assert "ok" in openai_line
    assert any(line.startswith("groq") and "FAIL" in line for line in lines)
    assert KEY not in table and KEY not in json.dumps(rows)


def test_providers_command_json_without_health(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for var in (
        "OPENAI_API_KEY",
        "ANTHROPIC_API_KEY",
        "GEMINI_API_KEY",
        "GOOGLE_API_KEY",
        "OLLAMA_BASE_URL",
        "HF_TOKEN",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-api03-" + "k" * 30 + "WXYZ")
    settings = Settings(namespace="t").with_file(
        cfg(local={"type": "ollama", "base_url": "http://127.0.0.1:9"})
    )
    code = providers_cmd.run(argparse.Namespace(json=True, no_health=True), settings)
    out = capsys.readouterr().out
    data = json.loads(out)
    names = [r["name"] for r in data["providers"]]
    assert code == 0
    assert {"simulated", "local", "anthropic"} <= set(names)
    anth = next(r for r in data["providers"] if r["name"] == "anthropic")
    assert anth["key"]["masked"] == "sk-…WXYZ" and anth["health"] is None
    local = next(r for r in data["providers"] if r["name"] == "local")
    assert local["key"] == {"required": False, "set": False, "source": "OLLAMA_API_KEY", "masked": None}
    assert "k" * 30 not in out


def test_providers_command_registers_subcommand() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    providers_cmd.register(sub)
    args = parser.parse_args(["providers", "--json", "--no-health"])
    assert args.fn is providers_cmd.run and args.json and args.no_health
