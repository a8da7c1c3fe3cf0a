"""Pure helpers of salt/_modules/pgbouncer.py: ini, connect strings, auth file, validation,
SCRAM verifiers, console CSV. No host changes."""
import base64
import re
import socket

import pytest
from repo_modules import REPO, load
from salt.exceptions import SaltInvocationError

pytestmark = pytest.mark.unit

pgb = load("salt/_modules/pgbouncer.py")


def refused(match, func, *args):
    with pytest.raises(SaltInvocationError, match=match) as info:
        func(*args)
    return str(info.value)


def test_ini_round_trip_is_stable_and_sorted():
    text = pgb._render_ini({"pgbouncer": {"listen_port": "6432", "auth_type": "hba"},
                            "databases": {"b": "host=x", "a": "host=y port=1"}})
    assert pgb._parse_ini(text) == {"databases": {"a": "host=y port=1", "b": "host=x"},
                                    "users": {},
                                    "pgbouncer": {"auth_type": "hba", "listen_port": "6432"}}
    assert pgb._render_ini(pgb._parse_ini(text)) == text
    assert text.index("a = ") < text.index("b = ")


def test_ini_parser_skips_comments_and_keeps_later_semicolons():
    text = "; top\n[PgBouncer]\n# c\n server_check_query = select 1; -- x \n"
    assert pgb._parse_ini(text) == {"pgbouncer": {"server_check_query": "select 1; -- x"}}


def test_connect_string_quotes_values_with_spaces():
    entry = {"host": "198.19.1.10", "port": "5432", "dbname": "app",
             "connect_query": "SET search_path TO app"}
    text = pgb._format_connstr(entry)
    assert text == "host=198.19.1.10 port=5432 dbname=app connect_query='SET search_path TO app'"
    assert pgb._parse_connstr(text) == entry
    assert pgb._parse_connstr("connect_query='it''s'") == {"connect_query": "it's"}


def test_auth_file_round_trip():
    users = {"app": "s3cret", "stats": pgb._scram_verifier("x", base64.b64encode(b"1" * 16))}
    assert pgb._parse_auth_file(pgb.render_auth_file(users)) == users


@pytest.mark.parametrize("password", ['pa"ss', "pa'ss", "pa\nss", "pa\rss", "back\\slash"])
def test_passwords_the_auth_file_cannot_hold_are_refused_without_echo(password):
    message = refused(r"users:app:password", pgb._check_user, "app", password, "users")
    assert password not in message


@pytest.mark.parametrize("name", ["app db", 'a"b', "a'b", "x\ny", "", "1abc", "a" * 64, "a;b"])
def test_unsafe_user_and_database_names_are_refused(name):
    refused(r"users:", pgb._check_user, name, "pw", "users")
    refused(r"databases:", pgb.render_database, name, {"host": "198.19.1.10"})


def test_settings_render_types():
    rendered = pgb.render_settings({
        "listen_port": 6432, "log_connections": True, "server_lifetime": 1800,
        "reserve_pool_timeout": 0.5, "pool_mode": "transaction", "listen_addr": "198.18.2.11",
        "default_pool_size": 20, "max_db_connections": 50})
    assert rendered == {"listen_port": "6432", "log_connections": "1", "server_lifetime": "1800",
                        "reserve_pool_timeout": "0.5", "pool_mode": "transaction",
                        "listen_addr": "198.18.2.11", "default_pool_size": "20",
                        "max_db_connections": "50"}


@pytest.mark.parametrize("settings, key", [
    ({"max_client_connections": 500}, "settings:max_client_connections"),
    ({"max_client_conn": "many"}, "settings:max_client_conn"),
    ({"max_client_conn": True}, "settings:max_client_conn"),
    ({"log_connections": "yes"}, "settings:log_connections"),
    ({"server_lifetime": -1}, "settings:server_lifetime"),
    ({"pool_mode": "transactions"}, "settings:pool_mode"),
    ({"listen_port": 70000}, "settings:listen_port"),
    ({"listen_addr": "gateway.example"}, "settings:listen_addr"),
    ({"server_check_query": "select 1\nselect 2"}, "settings:server_check_query"),
    ({"default_pool_size": 60, "max_db_connections": 50}, "settings:default_pool_size"),
    ({"auth_type": "hba"}, "settings:auth_hba_file"),
])
def test_bad_settings_name_the_key(settings, key):
    refused(f"^{key}: ", pgb.render_settings, settings)


@pytest.mark.parametrize("entry, key", [
    ({"host": "198.19.1.10", "password": "x"}, "databases:appdb:password"),
    ({"host": "198.19.1.10", "pool_size": "big"}, "databases:appdb:pool_size"),
    ({"host": "198.19.1.10", "max_connections": 5}, "databases:appdb:max_connections"),
    ({"host": "198.19.1.10", "connect_query": "SELECT 'x'"}, "databases:appdb:connect_query"),
    ({"host": "a b"}, "databases:appdb:host"),
    ({"port": 5432}, "databases:appdb:host"),
])
def test_bad_database_entries_name_the_key(entry, key):
    refused(f"^{key}: ", pgb.render_database, "appdb", entry)


def test_pool_size_above_database_limit_is_refused():
    databases = {"appdb": {"host": "h", "pool_size": "60"}}
    refused("databases:appdb:pool_size", pgb.check_pool_sizes, databases,
            {"max_db_connections": "50"})
    pgb.check_pool_sizes(databases, {"max_db_connections": "0"})


def test_scram_verifier_format_and_determinism():
    salt = base64.b64encode(b"0123456789abcdef").decode()
    verifier = pgb._scram_verifier("pencil", salt)
    assert verifier == pgb._scram_verifier("pencil", salt)
    iterations, rest = verifier.removeprefix("SCRAM-SHA-256$").split(":", 1)
    assert iterations == "4096" and rest.startswith(salt + "$")
    stored, server = rest.split("$")[1].split(":")
    assert len(base64.b64decode(stored)) == len(base64.b64decode(server)) == 32
    assert pgb._scram_verifier("pencil", salt) != pgb._scram_verifier("pencil")
    assert pgb._verifier_matches(verifier, "pencil")
    assert not pgb._verifier_matches(verifier, "pencil2")
    assert pgb._verifier_matches(pgb._scram_verifier("pw", salt, 10000), "pw")


def test_saslprep_as_postgresql():
    assert pgb._saslprep("plain ascii\x07") == "plain ascii\x07"  # ASCII passes untouched
    assert pgb._saslprep("I\u00adX") == "IX"  # soft hyphen maps to nothing
    assert pgb._saslprep("\u2168") == "IX"  # NFKC
    assert pgb._saslprep("a\u0007\u00e9") == "a\u0007\u00e9"  # prohibited: used as is


def test_console_csv_types_counters_only():
    text = "name,host,port,pool_size,pool_mode\nappdb,198.19.1.10,5432,20,\n"
    assert pgb._parse_console_csv(text) == [
        {"name": "appdb", "host": "198.19.1.10", "port": 5432, "pool_size": 20, "pool_mode": ""}]
    config = pgb._parse_console_csv("key,value,default,changeable\nlisten_port,6432,6432,no\n")
    assert config == [{"key": "listen_port", "value": "6432", "default": "6432",
                       "changeable": "no"}]


def test_same_setting_normalises_modes_and_times():
    assert pgb.same_setting("unix_socket_mode", "0777", "511")
    assert pgb.same_setting("reserve_pool_timeout", "5", "5.0")
    assert not pgb.same_setting("listen_port", "6432", "6433")


def test_port_in_use_sees_a_listener():
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        assert pgb.port_in_use("127.0.0.1", port) == "127.0.0.1"
    assert pgb.port_in_use("127.0.0.1", port) is None


def test_rendered_settings_and_entries_validate_again_unchanged():
    settings = pgb.render_settings({"log_connections": True, "server_lifetime": 1800,
                                    "reserve_pool_timeout": 0.5, "max_client_conn": 500})
    assert pgb.render_settings(settings) == settings
    entry = pgb.render_database("appdb", {"host": "198.19.1.10", "port": 5432, "pool_size": 20})
    assert pgb.render_database("appdb", pgb._parse_connstr(pgb._format_connstr(entry))) == entry


EXAMPLE_HBA = ["host all all 127.0.0.1/32 scram-sha-256",
               "host pgbouncer all 198.18.2.0/24 reject",
               "host all all 198.18.2.0/24 scram-sha-256"]


def test_hba_that_closes_the_admin_database_to_networks_passes():
    assert pgb.check_hba(EXAMPLE_HBA)
    assert pgb.check_hba("\n".join(EXAMPLE_HBA) + "\n")
    assert pgb.check_hba(["host appdb,app2db all 198.18.2.0/24 scram-sha-256",
                          "host pgbouncer all ::1/128 scram-sha-256", "local all all peer",
                          "host pgbouncer all 0.0.0.0/0 reject",
                          "host all all 10.0.0.0/8 scram-sha-256"])


@pytest.mark.parametrize("hba, index, address", [
    (["host all all 198.18.2.0/24 scram-sha-256"], 0, "198.18.2.0/24"),
    (["host all all 127.0.0.1/32 scram-sha-256", "hostssl pgbouncer all 198.18.2.7/32 md5"],
     1, "198.18.2.7/32"),
    (["host pgbouncer all 198.18.2.0/25 reject", "host all all 198.18.2.0/24 trust"],
     1, "198.18.2.0/24"),
    (["host all all 198.18.2.0 255.255.255.0 scram-sha-256"], 0, "198.18.2.0 255.255.255.0"),
    (["host pgbouncer,appdb all all scram-sha-256"], 0, "all"),
])
def test_hba_that_opens_the_admin_database_to_a_network_is_refused(hba, index, address):
    message = refused(rf"^hba:{index}: admits {address} to PgBouncer's admin database",
                      pgb.check_hba, hba)
    assert f"put 'host pgbouncer all {address} reject' before it" in message


def test_the_example_pillar_keeps_the_admin_database_closed():
    text = (REPO / "pillar/vpn_gateway/pooler.sls").read_text()
    rules = re.findall(r"^\s+- (host\S* .*)$", text.split("    hba:", 1)[1], re.M)
    assert rules and pgb.check_hba(rules)
