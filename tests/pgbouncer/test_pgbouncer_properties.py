"""Property tests (Hypothesis) of PgBouncer's file helpers: connect strings,
pgbouncer.ini and the auth file read back what was written (issue 14: a fuzz
found 37 round-trip failures on quote characters in the connect strings)."""
import pytest
from hypothesis import given, settings, strategies as st
from repo_modules import load
from salt.exceptions import SaltInvocationError

pytestmark = pytest.mark.unit

pgb = load("salt/_modules/pgbouncer.py")

# what one line of pgbouncer.ini can hold: no line ends, no NUL, no surrounding blanks
ONE_LINE = st.text(st.characters(blacklist_characters="\n\r\0", blacklist_categories=("Cs",)),
                   max_size=40)
VALUES = ONE_LINE | st.text(" '\"=a\\", max_size=8)
NAMES = st.from_regex(r"[a-z_][a-z0-9_.-]{0,20}", fullmatch=True)
CONNSTR_ENTRIES = st.dictionaries(st.sampled_from(sorted(pgb.DATABASE_KEYS)), VALUES,
                                  max_size=len(pgb.DATABASE_KEYS))


@settings(max_examples=400, deadline=None)
@given(CONNSTR_ENTRIES)
def test_connect_strings_read_back_what_was_written(entry):
    assert pgb._parse_connstr(pgb._format_connstr(entry)) == entry


@pytest.mark.parametrize("text, entry", [
    ("connect_query='it''s'", {"connect_query": "it's"}),
    ('connect_query="say ""hi"""', {"connect_query": 'say "hi"'}),
    ("host=a connect_query='' port=1", {"host": "a", "connect_query": "", "port": "1"}),
    ("timezone=it's", {"timezone": "it's"}),
])
def test_connect_strings_as_pgbouncer_quotes_them(text, entry):
    assert pgb._parse_connstr(text) == entry


@settings(max_examples=200, deadline=None)
@given(st.fixed_dictionaries({}, optional={
    section: st.dictionaries(NAMES, ONE_LINE.map(str.strip), max_size=5)
    for section in ("databases", "users", "pgbouncer")}))
def test_ini_reads_back_what_was_written(sections):
    text = pgb._render_ini(sections)
    expected = {section: sections.get(section, {})
                for section in ("databases", "users", "pgbouncer")}
    assert pgb._parse_ini(text) == expected
    assert pgb._render_ini(pgb._parse_ini(text)) == text


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(NAMES, ONE_LINE, max_size=6))
def test_auth_file_reads_back_every_user_it_accepts(users):
    try:
        text = pgb.render_auth_file(users)
    except SaltInvocationError:
        # refused as a whole: then some user or secret is one the file cannot hold
        assert any(_refused(name, secret) for name, secret in users.items())
        return
    assert pgb._parse_auth_file(text) == users


def _refused(name, secret):
    try:
        pgb._check_user(name, secret)
    except SaltInvocationError:
        return True
    return False
