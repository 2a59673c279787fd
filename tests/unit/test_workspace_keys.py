"""Workspaces' provider keys at rest and the pieces a worker uses, without servers: Fernet encryption
under ``DATAENGINE_ENCRYPTION_KEY`` and its rotation, the setting's checks, a workspace's limits, and
the stand-in server's keys."""

from __future__ import annotations

from types import SimpleNamespace

import openai
import pytest
from conftest import reload_settings
from cryptography.fernet import Fernet
from pydantic import ValidationError

from dataengine.infra.settings import Settings
from dataengine.llm import keyring, workspaces
from dataengine.llm.limits import ModelLimits
from dataengine.testing.standin_llm import FakeConfig, FakeLLMServer, key_digest

PROVIDER_KEY = "sk-workspace-secret-0123456789"


@pytest.fixture
def encryption_keys(monkeypatch):
    """Set ``DATAENGINE_ENCRYPTION_KEY`` to the keys given, in that order."""
    def use(*keys: str) -> None:
        monkeypatch.setenv("DATAENGINE_ENCRYPTION_KEY", ",".join(keys))
        reload_settings()

    yield use
    monkeypatch.delenv("DATAENGINE_ENCRYPTION_KEY", raising=False)
    reload_settings()


def test_a_key_encrypted_under_an_old_key_decrypts_after_rotation_and_then_under_the_new_key_alone(encryption_keys):
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    encryption_keys(old)
    token = keyring.encrypt(PROVIDER_KEY)
    assert PROVIDER_KEY not in token and keyring.decrypt(token) == PROVIDER_KEY
    encryption_keys(new, old)  # a new key first: it encrypts, both decrypt
    assert keyring.decrypt(token) == PROVIDER_KEY
    rotated = keyring.reencrypt(token)
    encryption_keys(new)  # the old key gone
    assert keyring.decrypt(rotated) == PROVIDER_KEY
    with pytest.raises(keyring.KeyUnreadable, match="no longer in DATAENGINE_ENCRYPTION_KEY") as refused:
        keyring.decrypt(token, what="workspace 'acme''s provider key")
    assert "workspace 'acme''s provider key" in str(refused.value) and old not in str(refused.value)


def test_without_an_encryption_key_nothing_is_encrypted_and_the_error_says_how_to_make_one(encryption_keys):
    encryption_keys("")  # blank is unset
    with pytest.raises(keyring.EncryptionKeyMissing, match="Fernet.generate_key"):
        keyring.encrypt(PROVIDER_KEY)


def test_a_malformed_encryption_key_is_refused_by_position_without_its_value(monkeypatch):
    good = Fernet.generate_key().decode()
    monkeypatch.setenv("DATAENGINE_ENCRYPTION_KEY", f"{good},not-a-fernet-key")
    with pytest.raises(ValidationError) as refused:
        Settings()
    assert "key 2 of 2 is not a Fernet key" in str(refused.value)
    assert "not-a-fernet-key" not in str(refused.value) and good not in str(refused.value)
    monkeypatch.setenv("DATAENGINE_ENCRYPTION_KEY", f" {good} ")
    assert Settings().encryption_key.get_secret_value() == good


def test_a_workspaces_limits_are_its_models_own_else_its_defaults_and_named_apart_from_the_engines(monkeypatch):
    limits = workspaces.WorkspaceLimits.model_validate({"rpm": 60, "models": {"gpt-4o": {"tpm": 1000}}})
    assert limits.for_model("gpt-4o") == ModelLimits(None, 1000)
    assert limits.for_model("gpt-4o-mini") == ModelLimits(60, None)
    assert workspaces.WorkspaceLimits().for_model("gpt-4o") == ModelLimits(None, None)
    monkeypatch.setattr(workspaces, "lookup", lambda ws: SimpleNamespace(own_key=ws == "acme"))
    assert workspaces.limit_name("gpt-4o", None) == "gpt-4o"
    assert workspaces.limit_name("gpt-4o", "acme") == "gpt-4o|ws:acme"
    assert workspaces.limit_name("gpt-4o", "shared") == "gpt-4o"  # on the engine's key: the engine's limits
    assert workspaces.limits_of("gpt-4o") is None  # the engine's own: the settings' limits apply


@pytest.mark.parametrize("bad", ["", "has space", "{braces}", "a|b", "-starts-with-dash", "x" * 101])
def test_a_workspace_id_is_letters_digits_dots_dashes_and_underscores(bad):
    with pytest.raises(workspaces.WorkspaceInvalid, match="an id is 1 to 100"):
        workspaces.validate_id(bad)


def test_the_stand_in_accepts_only_the_keys_it_is_told_and_counts_requests_by_a_digest_of_the_key():
    def ask(fake: FakeLLMServer, key: str) -> None:
        with openai.OpenAI(api_key=key, base_url=fake.base_url, max_retries=0) as client:
            client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "best pool"}])

    with FakeLLMServer(FakeConfig(accepted_keys=["sk-a"])) as fake:
        ask(fake, "sk-a")
        with pytest.raises(openai.AuthenticationError) as refused:
            ask(fake, "sk-b")
        assert refused.value.status_code == 401 and "sk-b" not in str(refused.value)
        assert fake.stats()["keys"] == {key_digest("sk-a"): 1, key_digest("sk-b"): 1}
        fake.configure(accepted_keys=[])  # the default: any key
        ask(fake, "sk-b")
