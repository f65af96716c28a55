"""config.parse_options: the one parser behind -o, fstab, CSI otherOpts and open_store."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pailfs.config import OPTIONS, option, parse_options
from pailfs.errors import BadOption
from pailfs.store import resolve_options


def parse(*specs: str, env: dict[str, str] | None = None):
    return parse_options(list(specs), env=env or {})


def test_defaults_follow_ossfs():
    opts = parse()
    assert (opts.multipart_size, opts.parallel_count, opts.max_multireq) == (10, 20, 20)
    assert (opts.max_stat_cache_size, opts.stat_cache_expire) == (1000, 900)
    assert opts.url is None and opts.ro is False and opts.umask is None
    assert opts.explicit() == {}


def test_values_flags_commas_and_spaces():
    opts = parse("ro, umask=022 ,kernel_cache", "parallel_count=8,,multipart_size=64")
    assert opts.ro is True and opts.read_only and opts.kernel_cache is True
    assert opts.umask == 0o22 and opts.parallel_count == 8 and opts.multipart_size == 64
    assert opts.explicit() == {"ro": True, "umask": 0o22, "kernel_cache": True, "parallel_count": 8,
                               "multipart_size": 64}


def test_flags_take_optional_booleans():
    assert parse("ro=false").ro is False
    assert parse("kernel_cache=yes").kernel_cache is True
    assert parse("allow_other=1", "allow_other=off").allow_other is False  # last one wins
    with pytest.raises(BadOption, match=r"bad value for option 'ro': 'maybe' \(expected a boolean"):
        parse("ro=maybe")


def test_unknown_option_lists_every_valid_name():
    with pytest.raises(BadOption) as caught:
        parse("ro,stat_cach_expire=10")
    message = str(caught.value)
    assert message.startswith("unknown option 'stat_cach_expire'; valid options: ")
    assert all(opt.name in message for opt in OPTIONS)
    assert "\n" not in message


@pytest.mark.parametrize("spec, reason", [
    ("parallel_count", "needs a value: -o parallel_count=N"),
    ("parallel_count=0", "must be > 0"),
    ("parallel_count=many", "not a valid number"),
    ("multipart_size=-5", "must be > 0"),
    ("umask=999", "not a valid number"),
    ("umask=1000", "between 000 and 777"),
    ("stat_cache_expire=-2", "-1 (forever) or >= 0"),
    ("uid=-1", "numeric id"),
    ("connect_timeout=0", "must be > 0 seconds"),
    ("url=", "must not be empty"),
    ("max_stat_cache_size=1.5", "not a valid number"),
])
def test_bad_values_say_why(spec, reason):
    with pytest.raises(BadOption) as caught:
        parse(spec)
    assert reason in str(caught.value) and spec.partition("=")[0] in str(caught.value)


def test_aliases_and_generic_mount_flags():
    opts = parse("mask=027,defaults,_netdev,noatime,nosuid,nofail")
    assert opts.umask == 0o27
    assert option("mask") is option("umask")
    with pytest.raises(BadOption, match="bad value for option 'mask'"):
        parse("mask=9")


def test_environment_and_precedence():
    env = {"PAILFS_ENDPOINT": "http://primary:8333", "URL": "http://fallback:1", "AWS_REGION": "eu-west-1"}
    assert parse(env=env).url == "http://primary:8333"
    assert parse(env={"URL": "http://elsewhere:1"}).url is None  # a generic $URL is not ours
    assert parse(env=env).region == "eu-west-1"
    assert parse("url=http://explicit:9", env=env).url == "http://explicit:9"  # -o beats env
    assert parse_options([], env=env, overrides={"url": "http://override"}).url == "http://override"


def test_contradictions():
    with pytest.raises(BadOption, match="'ro' and 'rw' contradict"):
        parse("ro,rw")
    with pytest.raises(BadOption, match=r"max_multireq \(4\) must be >= parallel_count \(8\)"):
        parse("parallel_count=8,max_multireq=4")
    assert parse("parallel_count=40").max_multireq == 40  # raised to match


def test_open_store_overrides_are_checked_like_dash_o():
    opts = resolve_options(["ro"], parallel_count="7", multipart_size=5)
    assert opts.ro and opts.parallel_count == 7 and opts.multipart_size == 5
    with pytest.raises(BadOption, match="unknown option 'parralel_count'"):
        resolve_options(None, parralel_count=3)
    with pytest.raises(BadOption, match=r"bad value for option 'parallel_count': 'x' \(not a valid number\)"):
        resolve_options(None, parallel_count="x")


# --- properties ---------------------------------------------------------------
_POSITIVE = [o.name for o in OPTIONS if o.kind == "value" and o.parse.__name__ == "_pos_int"
             and o.name not in ("max_multireq",)]


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40))
def test_any_text_parses_or_fails_with_one_line_bad_option(text):
    try:
        parse(text)
    except BadOption as exc:
        assert "\n" not in str(exc)


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.sampled_from(_POSITIVE), st.integers(min_value=1, max_value=10**6), max_size=5),
       st.booleans(), st.one_of(st.none(), st.integers(min_value=0, max_value=0o777)))
def test_valid_settings_round_trip(ints, ro, umask):
    tokens = [f"{k}={v}" for k, v in ints.items()] + (["ro"] if ro else [])
    if umask is not None:
        tokens.append(f"umask={umask:03o}")
    opts = parse(",".join(tokens))
    for name, value in ints.items():
        assert opts.values[name] == value
    assert opts.ro is ro and opts.umask == umask
    assert opts.max_multireq >= opts.parallel_count
