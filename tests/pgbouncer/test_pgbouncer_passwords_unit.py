"""Issue 13: no public function of the pgbouncer modules takes a plaintext password as an
argument (it would land in ps, the job cache and logs). They take a pillar key, or a 0600 file
or stdin; errors never echo the value nor the key given (a password passed there by mistake)."""
import base64
import inspect
import io
import os

import pytest
from repo_modules import load
from salt.exceptions import SaltInvocationError

pytestmark = pytest.mark.unit

SECRET = "s3cret-pw"
SALT = base64.b64encode(b"0123456789abcdef").decode()
PUBLIC = ("check_user", "user_matches", "scram_verifier", "set_user")


@pytest.fixture
def pgb(tmp_path):
    module = load("salt/_modules/pgbouncer.py")
    pillar = {"vpn_gateway:pooler:users:app:password": SECRET}
    module.__salt__ = {"pillar.get": lambda key, default=None, unmask=False:
                       pillar.get(key, default)}
    return module


@pytest.mark.parametrize("function", PUBLIC)
def test_public_functions_take_no_plaintext_password(pgb, function):
    params = inspect.signature(getattr(pgb, function)).parameters
    assert "password" not in params and "secret" not in params
    assert not any(p.kind == p.VAR_KEYWORD for p in params.values())
    assert {"password_pillar", "password_file"} <= set(params)
    with pytest.raises(TypeError):
        getattr(pgb, function)(*(["app"] if function != "scram_verifier" else []),
                               password=SECRET)


def test_state_user_present_takes_no_plaintext_password():
    states = load("salt/_states/pgbouncer.py")
    params = inspect.signature(states.user_present).parameters
    assert "password" not in params and {"password_pillar", "password_file"} <= set(params)
    assert not any(p.kind == p.VAR_KEYWORD for p in params.values())


def test_verifier_from_pillar_equals_the_internal_one(pgb):
    expected = pgb._scram_verifier(SECRET, SALT)
    assert pgb.scram_verifier("vpn_gateway:pooler:users:app:password", SALT) == expected
    assert pgb.check_user("app", "vpn_gateway:pooler:users:app:password") is True


def test_verifier_from_stdin_and_from_a_0600_file(pgb, tmp_path, monkeypatch):
    expected = pgb._scram_verifier(SECRET, SALT)
    monkeypatch.setattr("sys.stdin", io.StringIO(SECRET + "\n"))
    assert pgb.scram_verifier(password_file="-", salt=SALT) == expected
    path = tmp_path / "pw"
    path.write_text(SECRET + "\n")
    path.chmod(0o600)
    assert pgb.scram_verifier(password_file=str(path), salt=SALT) == expected
    path.chmod(0o644)
    with pytest.raises(SaltInvocationError, match="chmod 0600") as info:
        pgb.scram_verifier(password_file=str(path), salt=SALT)
    assert SECRET not in str(info.value)
    os.unlink(path)


@pytest.mark.parametrize("function", PUBLIC)
def test_a_password_given_where_the_pillar_key_goes_is_not_echoed(pgb, function):
    args = (["app"] if function != "scram_verifier" else []) + [SECRET]
    with pytest.raises(SaltInvocationError, match="not set") as info:
        getattr(pgb, function)(*args)
    assert SECRET not in str(info.value)
    with pytest.raises(SaltInvocationError, match="exactly one"):
        getattr(pgb, function)(*args[:-1])
