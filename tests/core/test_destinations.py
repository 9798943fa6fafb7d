"""Destinations: normalization, patterns and conservative extraction from request text."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from remit.core.destinations import (
    Destination,
    DestinationKind,
    DestinationPattern,
    Extraction,
    RejectedCandidate,
    extract_destinations,
    normalize_destination,
    parse_pattern,
)
from remit.errors import InvalidRequest

K = DestinationKind


def norm(kind: str, raw: object) -> str:
    return normalize_destination(kind, raw).value


def refused(kind: str, raw: object) -> str:
    """Assert ``raw`` is refused; return the problem detail."""
    with pytest.raises(InvalidRequest) as info:
        normalize_destination(kind, raw)
    assert info.value.reason == "bad_destination"
    assert info.value.code == "invalid_request"
    return str(info.value.details["problem"])


def values(text: str) -> list[str]:
    return [str(d) for d in extract_destinations(text).destinations]


def rejections(text: str) -> list[tuple[str, str]]:
    return [(r.text, r.reason) for r in extract_destinations(text).rejected]


def matches(pattern: str, kind: str, raw: str) -> bool:
    return parse_pattern(pattern).matches(normalize_destination(kind, raw))


# ---------------------------------------------------------------- kinds and types


def test_kind_values() -> None:
    assert [k.value for k in DestinationKind] == [
        "email",
        "url",
        "domain",
        "account",
        "user",
        "channel",
        "phone",
    ]


def test_kind_accepts_enum_or_string() -> None:
    assert normalize_destination(K.EMAIL, "a@example.com") == normalize_destination(
        "email", "a@example.com"
    )
    assert normalize_destination("email", "a@example.com").kind is K.EMAIL


@pytest.mark.parametrize("kind", ["EMAIL", "mail", "", None, 3, "email "])
def test_unknown_kind_is_refused(kind: object) -> None:
    assert refused(kind, "a@example.com") == "bad_kind"  # type: ignore[arg-type]


@pytest.mark.parametrize("raw", [None, 42, b"a@example.com", ["a@example.com"], {"a": 1}])
def test_non_string_is_refused(raw: object) -> None:
    assert refused("email", raw) == "not_text"


def test_str_and_hash() -> None:
    dest = normalize_destination("email", "Alice@Example.com")
    assert str(dest) == "email:alice@example.com"
    assert dest == Destination(K.EMAIL, "alice@example.com")
    assert len({dest, normalize_destination("email", "ALICE@EXAMPLE.COM")}) == 1


def test_destination_is_frozen() -> None:
    dest = normalize_destination("domain", "example.com")
    with pytest.raises(AttributeError):
        dest.value = "evil.com"  # type: ignore[misc]


def test_direct_construction_must_be_normalized() -> None:
    with pytest.raises(InvalidRequest) as info:
        Destination(K.EMAIL, "Alice@example.com")
    assert info.value.details["problem"] == "not_normalized"
    with pytest.raises(InvalidRequest):
        Destination(K.URL, "https://example.com")  # normalized form has the '/' path
    with pytest.raises(InvalidRequest):
        Destination(K.EMAIL, "a@exаmple.com")
    assert Destination("domain", "example.com").kind is K.DOMAIN  # type: ignore[arg-type]


def test_messages_do_not_echo_input() -> None:
    secret = "hunter2-secret-local@example.com\u200b"
    with pytest.raises(InvalidRequest) as info:
        normalize_destination("email", secret)
    assert "hunter2" not in str(info.value)
    assert "hunter2" not in repr(info.value)


# ---------------------------------------------------------------- common rules


def test_too_long_is_refused() -> None:
    assert refused("user", "a" * 513) == "too_long"
    assert refused("email", "a" * 300 + "@example.com") == "too_long"


def test_nfkc_expansion_is_bounded() -> None:
    # U+FDFA expands to 18 characters under NFKC.
    assert refused("user", "\ufdfa" * 100) == "too_long"


@pytest.mark.parametrize(
    "raw",
    [
        "alice@exa\u200bmple.com",  # zero-width space
        "alice@exa\u200dmple.com",  # zero-width joiner
        "alice@exa\u200cmple.com",  # zero-width non-joiner
        "\ufeffalice@example.com",  # BOM
        "alice@exam\u00adple.com",  # soft hyphen
        "alice@\u202eelpmaxe.com",  # right-to-left override
        "alice@\u2067example.com",  # right-to-left isolate
        "alice@example.com\u200f",  # right-to-left mark
        "alice@example.com\x00",
        "alice@example.com\n",
        "alice@example.com\t",
        "alice@example.com\x1b[0m",
        "alice@example.com\u2028",
        "alice@example.com\U000e0041",  # tag character
        "alice@example.com\ud800",  # lone surrogate
    ],
)
def test_invisible_and_control_characters_are_refused_not_stripped(raw: str) -> None:
    assert refused("email", raw) == "confusable"


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ("alice@exаmple.com", "confusable"),  # Cyrillic a
        ("alice@ехample.com", "confusable"),  # Cyrillic e and x
        ("alice@examρle.com", "confusable"),  # Greek rho
        ("аlice@example.com", "confusable"),
        ("alice@example.cοm", "confusable"),  # Greek omicron
        ("почта@пример.рф", "non_ascii"),
        ("alice@bücher.de", "confusable"),
        ("alice@e\u0301xample.com", "confusable"),  # combining accent
        ("alice@example.com\ufe0f", "confusable"),  # variation selector (a mark)
        ("alice@example.com\u00b7", "non_ascii"),  # middle dot
        ("alice@example\u3002com", "non_ascii"),  # ideographic full stop
    ],
)
def test_look_alikes_are_refused(raw: str, problem: str) -> None:
    assert refused("email", raw) == problem


def test_ascii_look_alikes_are_simply_different_addresses() -> None:
    # Capital I and lower-case l are both ASCII: a different, valid address that
    # a pattern for the real one never matches.
    spoof = normalize_destination("email", "alice@exampIe.com")
    assert spoof.value == "alice@exampie.com"
    assert not parse_pattern("email:*@example.com").matches(spoof)


def test_fullwidth_forms_are_the_same_characters() -> None:
    assert norm("email", "ａｌｉｃｅ＠ｅｘａｍｐｌｅ．ｃｏｍ") == "alice@example.com"
    assert norm("url", "ｈｔｔｐｓ：／／ｅｘａｍｐｌｅ．ｃｏｍ／ｘ") == "https://example.com/x"
    assert norm("phone", "＋４９ ３０ １２３４５６７") == "+49301234567"


def test_surrounding_spaces_are_trimmed() -> None:
    assert norm("email", "  alice@example.com ") == "alice@example.com"
    assert norm("email", "\u00a0alice@example.com\u3000") == "alice@example.com"
    assert refused("email", "   ") == "malformed"
    assert refused("email", "") == "malformed"


# ---------------------------------------------------------------- email


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        ("alice@example.com", "alice@example.com"),
        ("Alice.Smith@Example.COM", "alice.smith@example.com"),
        ("alice+tag@mail.example.co.uk", "alice+tag@mail.example.co.uk"),
        ("o'brien@example.com", "o'brien@example.com"),
        ("a_b-c@sub-domain.example.com", "a_b-c@sub-domain.example.com"),
        ("alice@example.com.", "alice@example.com"),
        ("x@xn--bcher-kva.example", "x@xn--bcher-kva.example"),
    ],
)
def test_email_normalization(raw: str, value: str) -> None:
    assert norm("email", raw) == value


def test_plus_tags_are_distinct_addresses() -> None:
    assert norm("email", "alice+x@example.com") != norm("email", "alice@example.com")


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ("alice", "malformed"),
        ("alice@", "malformed"),
        ("@example.com", "malformed"),
        ("alice@@example.com", "malformed"),
        ("alice@bob@example.com", "malformed"),
        ('"alice smith"@example.com', "malformed"),  # quoted local part
        ('"alice@evil.com"@example.com', "malformed"),
        ("alice(comment)@example.com", "malformed"),
        ("alice@[192.168.0.1]", "ip_literal"),
        ("alice@192.168.0.1", "ip_literal"),
        ("alice@localhost", "malformed"),
        ("alice@example", "malformed"),
        (".alice@example.com", "malformed"),
        ("alice.@example.com", "malformed"),
        ("al..ice@example.com", "malformed"),
        ("alice%evil.com@example.com", "malformed"),  # percent-hack source routing
        ("evil.com!alice@example.com", "malformed"),  # bang path
        ("*@example.com", "malformed"),  # '*' is reserved for patterns
        ("alice@-example.com", "malformed"),
        ("alice@example-.com", "malformed"),
        ("alice@exa_mple.com", "malformed"),
        ("alice@example..com", "malformed"),
        ("alice @example.com", "malformed"),
        ("alice@example.com,bob@example.com", "malformed"),
        ("alice@example.com>", "malformed"),
        ("alice@xn--zz.com", "malformed"),  # not real punycode
        ("a" * 65 + "@example.com", "too_long"),
        ("alice@" + "a" * 64 + ".com", "malformed"),
        ("alice@" + ".".join(["abcdefghij"] * 25) + ".com", "too_long"),
    ],
)
def test_email_refusals(raw: str, problem: str) -> None:
    assert refused("email", raw) == problem


def test_email_total_length_limit() -> None:
    domain = ".".join(["a" * 60] * 3) + ".com"  # 186 characters
    assert norm("email", "b" * 60 + "@" + domain)
    long_domain = ".".join(["a" * 60] * 4)[:-4] + ".com"
    assert len("b" * 64 + "@" + long_domain) > 254
    assert refused("email", "b" * 64 + "@" + long_domain) == "too_long"


# ---------------------------------------------------------------- domain


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        ("example.com", "example.com"),
        ("Example.COM.", "example.com"),
        ("a-b.example.co.uk", "a-b.example.co.uk"),
        ("xn--80ak6aa92e.com", "xn--80ak6aa92e.com"),
        ("123.example.com", "123.example.com"),
        ("example.xn--p1ai", "example.xn--p1ai"),
    ],
)
def test_domain_normalization(raw: str, value: str) -> None:
    assert norm("domain", raw) == value


def test_punycode_lookalike_is_not_its_ascii_twin() -> None:
    # xn--80ak6aa92e is Cyrillic "аррӏе": an explicit, distinct name, never equal to apple.com.
    assert norm("domain", "xn--80ak6aa92e.com") != norm("domain", "apple.com")
    assert refused("domain", "аррӏе.com") == "confusable"


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ("com", "malformed"),
        ("localhost", "malformed"),
        ("example..com", "malformed"),
        (".example.com", "malformed"),
        ("example.com..", "malformed"),
        ("-example.com", "malformed"),
        ("exam_ple.com", "malformed"),
        ("example.com/path", "malformed"),
        ("example.com:80", "malformed"),
        ("*.example.com", "malformed"),
        ("a" * 64 + ".com", "malformed"),
        ("10.0.0.1", "ip_literal"),
        ("127.1", "ip_literal"),
        ("0x7f.0x1", "ip_literal"),
        ("example.0x", "ip_literal"),
        ("[::1]", "ip_literal"),
        ("xn--.com", "malformed"),
        ("xn--abc-.com", "malformed"),
        ("xn--abc.com", "malformed"),  # decodes to plain ASCII: a fake A-label
        (".".join(["abcdefghi"] * 26), "too_long"),
    ],
)
def test_domain_refusals(raw: str, problem: str) -> None:
    assert refused("domain", raw) == problem


# ---------------------------------------------------------------- url


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        ("https://example.com", "https://example.com/"),
        ("HTTPS://Example.COM/Path/To", "https://example.com/Path/To"),
        ("https://example.com:443/x", "https://example.com/x"),
        ("http://example.com:80/x", "http://example.com/x"),
        ("https://example.com:80/x", "https://example.com:80/x"),
        ("http://example.com:443/", "http://example.com:443/"),
        ("https://example.com:08443/", "https://example.com:8443/"),
        ("https://example.com/x?token=abc#frag", "https://example.com/x"),
        ("https://example.com?x=1", "https://example.com/"),
        ("https://example.com#@evil.com", "https://example.com/"),
        ("https://evil.com?@example.com", "https://evil.com/"),
        ("https://example.com./x", "https://example.com/x"),
        ("https://example.com/%7euser/%41%2e", "https://example.com/~user/A."),
        ("https://example.com/a%2ab/%c3%a9", "https://example.com/a%2Ab/%C3%A9"),
        ("https://example.com/wiki/Foo_(bar)", "https://example.com/wiki/Foo_(bar)"),
        ("https://example.com/@alice", "https://example.com/@alice"),
        ("https://example.com//double", "https://example.com//double"),
    ],
)
def test_url_normalization(raw: str, value: str) -> None:
    assert norm("url", raw) == value


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ("https://user@evil.com/", "userinfo"),
        ("https://user:pass@example.com/", "userinfo"),
        ("https://example.com@evil.com/", "userinfo"),
        ("https://:@example.com/", "userinfo"),
        ("https://example.com%2f@evil.com/", "userinfo"),
        ("ftp://example.com/", "unsupported_scheme"),
        ("javascript:alert(1)", "unsupported_scheme"),
        ("file:///etc/passwd", "unsupported_scheme"),
        ("mailto:alice@example.com", "unsupported_scheme"),
        ("example.com/x", "malformed"),
        ("//example.com/x", "malformed"),
        ("https:example.com", "malformed"),
        ("https:/example.com", "malformed"),
        ("https:///x", "malformed"),
        ("https://localhost/", "malformed"),
        ("https://127.0.0.1/", "ip_literal"),
        ("https://[::1]/", "ip_literal"),
        ("https://0x7f.1/", "ip_literal"),
        ("https://2130706433/", "malformed"),
        ("https://example.com:0/", "malformed"),
        ("https://example.com:65536/", "malformed"),
        ("https://example.com:/", "malformed"),
        ("https://example.com:http/", "malformed"),
        ("https://example.com\\@evil.com/", "malformed"),
        ("https://evil.com\\.example.com/", "malformed"),
        ("https://example.com/a b", "malformed"),
        ('https://example.com/"x"', "malformed"),
        ("https://example.com/<script>", "malformed"),
        ("https://example.com/a*", "malformed"),
        ("https://example.com/v1/../admin", "malformed"),
        ("https://example.com/v1/./x", "malformed"),
        ("https://example.com/v1/%2e%2e/admin", "malformed"),
        ("https://example.com/v1/%2E./admin", "malformed"),
        ("https://example.com/v1/..;/admin", "malformed"),
        ("https://example.com/v1%2f..%2fadmin", "malformed"),
        ("https://example.com/v1%5c..%5cadmin", "malformed"),
        ("https://example.com/v1/%252e%252e/admin", "malformed"),
        ("https://example.com/%0d%0aSet-Cookie:x", "malformed"),
        ("https://example.com/%zz", "malformed"),
        ("https://example.com/%4", "malformed"),
        ("https://exаmple.com/", "confusable"),
        ("https://bücher.example/", "confusable"),
    ],
)
def test_url_refusals(raw: str, problem: str) -> None:
    assert refused("url", raw) == problem


# ---------------------------------------------------------------- account


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        ("DE89 3704 0044 0532 0130 00", "DE89370400440532013000"),
        ("DE89370400440532013000", "DE89370400440532013000"),
        ("de89 3704 0044 0532 0130 00", "DE89370400440532013000"),
        ("GB82 WEST 1234 5698 7654 32", "GB82WEST12345698765432"),
        ("NL91 ABNA 0417 1643 00", "NL91ABNA0417164300"),
        ("BE68 5390 0754 7034", "BE68539007547034"),
        ("NO93 8601 1117 947", "NO9386011117947"),
        ("acct-12345", "acct-12345"),
        ("ACCT:Treasury.Main_01", "ACCT:Treasury.Main_01"),
    ],
)
def test_account_normalization(raw: str, value: str) -> None:
    assert norm("account", raw) == value


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ("DE89 3704 0044 0532 0130 01", "bad_checksum"),
        ("DE88 3704 0044 0532 0130 00", "bad_checksum"),
        ("DE89370400440532013001", "bad_checksum"),
        ("GB82 WEST 1234 5698 7654 33", "bad_checksum"),
        ("de00370400440532013000", "bad_checksum"),
        ("acct 12345", "malformed"),
        ("acct/12345", "malformed"),
        ("acct*", "malformed"),
        ("a" * 65, "malformed"),
        ("DE89 3704 0044 0532 0130 0О", "confusable"),  # Cyrillic O
    ],
)
def test_account_refusals(raw: str, problem: str) -> None:
    assert refused("account", raw) == problem


def test_account_ids_are_case_sensitive_but_ibans_are_not() -> None:
    assert norm("account", "Acct-1") != norm("account", "acct-1")
    assert norm("account", "de89370400440532013000") == norm("account", "DE89370400440532013000")


# ---------------------------------------------------------------- phone


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        ("+4930123456", "+4930123456"),
        ("+49 30 1234567", "+49301234567"),
        ("+1 (555) 123-4567", "+15551234567"),
        ("+1.555.123.4567", "+15551234567"),
        ("+44 20 7946 0958", "+442079460958"),
        ("+123456789012345", "+123456789012345"),
    ],
)
def test_phone_normalization(raw: str, value: str) -> None:
    assert norm("phone", raw) == value


@pytest.mark.parametrize(
    "raw",
    [
        "4930123456",  # no '+'
        "0049 30 123456",
        "+49 (0) 30 1234567",  # trunk prefix: stripping the brackets changes the number
        "+49 (030) 1234567",
        "+0123456789",
        "+1234567",  # 7 digits
        "+1234567890123456",  # 16 digits
        "+49 30 123 abc",
        "+49--30-1234567",
        "+49 30 1234567 ext 5",
        "+(49) 30 1234567",
        "+1 (555 123-4567",
        "++4930123456",
        "+49/30/1234567",
    ],
)
def test_phone_refusals(raw: str) -> None:
    assert refused("phone", raw) == "malformed"


# ---------------------------------------------------------------- user, channel


@pytest.mark.parametrize(
    ("kind", "raw"),
    [
        ("user", "U024BE7LH"),
        ("user", "alice@example.com"),
        ("user", "team:support"),
        ("channel", "#general"),
        ("channel", "C01ABCDEF"),
        ("channel", "#Ops-Alerts"),
    ],
)
def test_opaque_names_keep_case(kind: str, raw: str) -> None:
    assert norm(kind, raw) == raw


@pytest.mark.parametrize("raw", ["a b", "a/b", "a*", "x" * 129, "chan\u200bnel", "#génér"])
def test_opaque_name_refusals(raw: str) -> None:
    with pytest.raises(InvalidRequest):
        normalize_destination("channel", raw)


def test_single_hash_channel_is_valid() -> None:
    assert norm("channel", "#") == "#"


# ---------------------------------------------------------------- patterns


@pytest.mark.parametrize(
    ("text", "value", "wildcard"),
    [
        ("email:Alice@Example.com", "alice@example.com", False),
        ("email:*@Example.com", "*@example.com", True),
        ("email:*@*.Example.com", "*@*.example.com", True),
        ("domain:Example.com.", "example.com", False),
        ("domain:*.example.com", "*.example.com", True),
        ("url:https://api.example.com/v1/*", "https://api.example.com/v1/*", True),
        ("url:HTTPS://API.example.com:443/*", "https://api.example.com/*", True),
        ("url:https://example.com", "https://example.com/", False),
        ("account:DE89 3704 0044 0532 0130 00", "DE89370400440532013000", False),
        ("phone:+49 30 1234567", "+49301234567", False),
        ("user:team:support", "team:support", False),
        ("channel:#general", "#general", False),
        ("email:＊＠ｅｘａｍｐｌｅ．ｃｏｍ", "*@example.com", True),
    ],
)
def test_parse_pattern(text: str, value: str, wildcard: bool) -> None:
    pattern = parse_pattern(text)
    assert pattern.value == value
    assert pattern.is_wildcard() is wildcard
    assert str(pattern) == f"{pattern.kind.value}:{value}"
    assert parse_pattern(str(pattern)) == pattern


@pytest.mark.parametrize(
    "text",
    [
        "*",
        "email:*",
        "domain:*",
        "url:*",
        "email:*@*",
        "email:*@*.*",
        "domain:*.*",
        "domain:*.",
        "domain:*.com",  # a whole TLD: '*.' needs a base with a dot
        "email:*@*.com",
        "email:*@com",
        "email:alice@*.example.com",
        "email:a*@example.com",
        "email:*alice@example.com",
        "email:*@exa*mple.com",
        "domain:*example.com",
        "domain:a.*.example.com",
        "domain:**.example.com",
        "url:https://*.example.com/",
        "url:https://api.example.com/v1*",
        "url:https://api.example.com*",
        "url:https://api.example.com/*/x",
        "url:https://api.example.com/v1/**",
        "url:https://api.example.com/v1/?q=*",
        "url:https://api.example.com/x?a=1",
        "url:https://api.example.com/x#top",
        "url:https://user@api.example.com/*",
        "account:DE89*",
        "account:*",
        "phone:+49*",
        "user:*",
        "user:admin*",
        "channel:#*",
        "email",
        "",
        "bogus:example.com",
        "EMAIL:alice@example.com",
        "email:",
        "email:alice@exаmple.com",
        "domain:*.exаmple.com",
        "domain:*.example.com\u200b",
    ],
)
def test_bad_patterns_are_refused(text: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_pattern(text)
    assert info.value.reason == "bad_destination"


def test_non_string_pattern_is_refused() -> None:
    with pytest.raises(InvalidRequest):
        parse_pattern(None)
    with pytest.raises(InvalidRequest):
        parse_pattern(b"email:a@example.com")


def test_bare_star_is_reported_as_universal() -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_pattern("email:*")
    assert info.value.details["problem"] == "universal"


def test_direct_pattern_construction_is_checked() -> None:
    assert DestinationPattern(K.EMAIL, "*@example.com").is_wildcard()
    for kind, value in [
        (K.EMAIL, "*@Example.com"),
        (K.EMAIL, "*"),
        (K.DOMAIN, "*.com"),
        (K.URL, "https://example.com"),
        (K.PHONE, "+49*"),
    ]:
        with pytest.raises(InvalidRequest):
            DestinationPattern(kind, value)


@pytest.mark.parametrize(
    ("pattern", "kind", "raw", "expected"),
    [
        # exact
        ("email:alice@example.com", "email", "ALICE@example.COM", True),
        ("email:alice@example.com", "email", "alice+x@example.com", False),
        ("email:alice@example.com", "email", "alice@example.com.evil.net", False),
        ("email:alice@example.com", "email", "alice@sub.example.com", False),
        # email wildcard at exactly the domain
        ("email:*@example.com", "email", "bob@example.com", True),
        ("email:*@example.com", "email", "Bob@EXAMPLE.com", True),
        ("email:*@example.com", "email", "bob@sub.example.com", False),
        ("email:*@example.com", "email", "bob@evil-example.com", False),
        ("email:*@example.com", "email", "bob@example.com.evil.net", False),
        ("email:*@example.com", "email", "bob@notexample.com", False),
        # email wildcard at strict subdomains
        ("email:*@*.example.com", "email", "bob@sub.example.com", True),
        ("email:*@*.example.com", "email", "bob@a.b.example.com", True),
        ("email:*@*.example.com", "email", "bob@example.com", False),
        ("email:*@*.example.com", "email", "bob@evil-example.com", False),
        ("email:*@*.example.com", "email", "bob@subexample.com", False),
        # domain patterns
        ("domain:example.com", "domain", "EXAMPLE.com.", True),
        ("domain:example.com", "domain", "sub.example.com", False),
        ("domain:*.example.com", "domain", "sub.example.com", True),
        ("domain:*.example.com", "domain", "a.b.example.com", True),
        ("domain:*.example.com", "domain", "example.com", False),
        ("domain:*.example.com", "domain", "evil-example.com", False),
        ("domain:*.example.com", "domain", "example.com.evil.net", False),
        ("domain:*.example.com", "domain", "sub.example.com.evil.net", False),
        ("domain:*.example.com", "domain", "xexample.com", False),
        # domain patterns cover emails and URLs on that host
        ("domain:example.com", "email", "alice@example.com", True),
        ("domain:example.com", "email", "alice@sub.example.com", False),
        ("domain:*.example.com", "email", "alice@sub.example.com", True),
        ("domain:*.example.com", "email", "alice@example.com", False),
        ("domain:example.com", "url", "https://example.com/x", True),
        ("domain:example.com", "url", "http://example.com:8080/x", True),
        ("domain:example.com", "url", "https://sub.example.com/x", False),
        ("domain:example.com", "url", "https://example.com.evil.net/", False),
        ("domain:example.com", "url", "https://evil.net/example.com", False),
        ("domain:*.example.com", "url", "https://api.example.com/", True),
        ("domain:example.com", "account", "acct-1", False),
        ("domain:example.com", "user", "alice@example.com", False),
        # url exact and prefix
        ("url:https://example.com/a", "url", "https://EXAMPLE.com:443/a?x=1#y", True),
        ("url:https://example.com/a", "url", "https://example.com/a/", False),
        ("url:https://example.com/a", "url", "http://example.com/a", False),
        ("url:https://example.com/a", "url", "https://example.com/A", False),
        ("url:https://api.example.com/v1/*", "url", "https://api.example.com/v1/", True),
        ("url:https://api.example.com/v1/*", "url", "https://api.example.com/v1/users/7", True),
        ("url:https://api.example.com/v1/*", "url", "https://api.example.com/v1//x", True),
        ("url:https://api.example.com/v1/*", "url", "https://api.example.com/v1", False),
        ("url:https://api.example.com/v1/*", "url", "https://api.example.com/v10", False),
        ("url:https://api.example.com/v1/*", "url", "https://api.example.com/v10/x", False),
        ("url:https://api.example.com/v1/*", "url", "https://api.example.com/v2/x", False),
        ("url:https://api.example.com/v1/*", "url", "http://api.example.com/v1/x", False),
        ("url:https://api.example.com/v1/*", "url", "https://api.example.com:8443/v1/x", False),
        ("url:https://api.example.com/v1/*", "url", "https://api.example.com.evil.net/v1/x", False),
        ("url:https://api.example.com/v1/*", "url", "https://sub.api.example.com/v1/x", False),
        ("url:https://api.example.com/v1/*", "url", "https://api.example.com/%76%31/x", True),
        ("url:https://api.example.com/*", "url", "https://api.example.com", True),
        ("url:https://api.example.com/*", "url", "https://api.example.com/anything", True),
        ("url:https://api.example.com:8443/*", "url", "https://api.example.com:8443/x", True),
        ("url:https://api.example.com:8443/*", "url", "https://api.example.com/x", False),
        # kinds do not cross (except domain)
        ("email:*@example.com", "url", "https://example.com/", False),
        ("email:*@example.com", "domain", "example.com", False),
        ("user:alice@example.com", "email", "alice@example.com", False),
        ("account:DE89370400440532013000", "account", "DE89 3704 0044 0532 0130 00", True),
        ("phone:+1 555 123 4567", "phone", "+1 (555) 123-4567", True),
        ("channel:#general", "channel", "#General", False),
    ],
)
def test_pattern_matching(pattern: str, kind: str, raw: str, expected: bool) -> None:
    assert matches(pattern, kind, raw) is expected


def test_dot_segments_cannot_escape_a_url_prefix() -> None:
    with pytest.raises(InvalidRequest):
        normalize_destination("url", "https://api.example.com/v1/../admin")
    with pytest.raises(InvalidRequest):
        normalize_destination("url", "https://api.example.com/v1/%2e%2e/admin")


def test_matches_ignores_non_destinations() -> None:
    pattern = parse_pattern("domain:example.com")
    assert pattern.matches("example.com") is False  # type: ignore[arg-type]


# ---------------------------------------------------------------- extraction: basics


def test_extraction_types() -> None:
    result = extract_destinations("mail alice@example.com")
    assert isinstance(result, Extraction)
    assert result.destinations == (Destination(K.EMAIL, "alice@example.com"),)
    assert result.rejected == ()
    assert extract_destinations("") == Extraction((), ())


def test_reply_to_ticket() -> None:
    assert values("reply to ticket 4711 from alice@example.com") == ["email:alice@example.com"]


@pytest.mark.parametrize(
    "text",
    [
        "mail alice@example.com.",
        "mail alice@example.com,",
        "mail alice@example.com;",
        "mail alice@example.com!",
        "mail alice@example.com?",
        "mail alice@example.com:",
        "mail alice@example.com...",
        "mail alice@example.com…",
        "mail (alice@example.com)",
        "mail (alice@example.com).",
        "mail [alice@example.com]",
        "mail {alice@example.com}",
        "mail <alice@example.com>",
        "mail Alice <alice@example.com>",
        'mail "Alice" <alice@example.com>',
        "mail Alice<alice@example.com>",
        'reply to "alice@example.com"',
        "reply to 'alice@example.com'",
        "reply to “alice@example.com”",
        "reply to «alice@example.com»",
        "reply to `alice@example.com`",
        "reply to **alice@example.com**",
        'reply to ("alice@example.com").',
        "reply to mailto:alice@example.com",
        "reply to mailto:alice@example.com?subject=hi&cc=eve@evil.com",
        "reply to <mailto:alice@example.com>",
        "reply to ALICE@EXAMPLE.COM",
        "reply to ａｌｉｃｅ＠ｅｘａｍｐｌｅ．ｃｏｍ",
        "reply to\u00a0alice@example.com\u3000now",
        "reply to alice@example.com\r\nthanks",
    ],
)
def test_email_punctuation_and_wrapping(text: str) -> None:
    assert values(text) == ["email:alice@example.com"]


def test_email_lists() -> None:
    assert values("cc alice@example.com,bob@example.org;carol@example.net") == [
        "email:alice@example.com",
        "email:bob@example.org",
        "email:carol@example.net",
    ]
    assert values("cc alice@example.com, bob@example.org and carol@example.net.") == [
        "email:alice@example.com",
        "email:bob@example.org",
        "email:carol@example.net",
    ]
    # All parts of a comma-joined token must be destinations, or none is taken.
    assert values("Hello,alice@example.com") == []
    assert rejections("Hello,alice@example.com") == [("Hello,alice@example.com", "malformed")]
    assert values("alice@example.com,,bob@example.com") == []


def test_no_substring_is_ever_invented() -> None:
    # Each token must validate whole; a valid-looking tail is never carved out.
    assert values("send to x=alice@example.com") == []
    assert values("send to alice%evil.com@example.com") == []
    assert values("send to alice@example.com/bob@evil.com") == []
    assert values("send to alice@example.com's inbox") == []
    assert values("send to alice@example.com_x") == []
    assert values("send to evil.com!alice@example.com") == []
    assert values('send to "alice"@example.com') == []
    assert values("wire to XDE89 3704 0044 0532 0130 00") == []


def test_deduplicate_in_order_of_first_appearance() -> None:
    text = "b@example.com then A@example.com, then a@example.com and B@EXAMPLE.COM"
    assert values(text) == ["email:b@example.com", "email:a@example.com"]


def test_order_across_kinds_and_lines() -> None:
    text = "call +49 30 1234567 or https://example.com/x\nthen alice@example.com and example.org"
    assert values(text) == [
        "phone:+49301234567",
        "url:https://example.com/x",
        "email:alice@example.com",
        "domain:example.org",
    ]


def test_mentions_and_non_destinations_are_ignored() -> None:
    text = "ping @alice about the build; user@localhost; 3.14; 10:30; version 2.0.1"
    assert extract_destinations(text) == Extraction((), ())


# ---------------------------------------------------------------- extraction: urls


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("see https://example.com", ["url:https://example.com/"]),
        ("see https://example.com/docs.", ["url:https://example.com/docs"]),
        ("see https://Example.com:443/a?b=c#d, ok", ["url:https://example.com/a"]),
        ("see (https://example.com/docs)", ["url:https://example.com/docs"]),
        (
            "see https://en.wikipedia.org/wiki/Foo_(bar)",
            ["url:https://en.wikipedia.org/wiki/Foo_(bar)"],
        ),
        (
            "(see https://en.wikipedia.org/wiki/Foo_(bar))",
            ["url:https://en.wikipedia.org/wiki/Foo_(bar)"],
        ),
        ("see <https://example.com/x>", ["url:https://example.com/x"]),
        ("see http://example.com:8080/x", ["url:http://example.com:8080/x"]),
        ("see https://example.com/?to=alice@example.com", ["url:https://example.com/"]),
    ],
)
def test_url_extraction(text: str, expected: list[str]) -> None:
    assert values(text) == expected


def test_url_host_is_not_also_a_domain_and_email_domain_is_not_either() -> None:
    assert values("see https://example.com/x and alice@example.org") == [
        "url:https://example.com/x",
        "email:alice@example.org",
    ]


@pytest.mark.parametrize(
    ("text", "snippet", "reason"),
    [
        ("open https://user@evil.com/x", "https://user@evil.com/x", "userinfo"),
        ("open https://example.com@evil.com/", "https://example.com@evil.com/", "userinfo"),
        ("open ftp://example.com/file", "ftp://example.com/file", "unsupported_scheme"),
        ("open https://127.0.0.1/admin", "https://127.0.0.1/admin", "ip_literal"),
        ("open https://xn--80ak6aa92e.com/", "https://xn--80ak6aa92e.com/", "punycode"),
        ("open https://exаmple.com/", "https://exаmple.com/", "confusable"),
        ("open https://example.com/../admin", "https://example.com/../admin", "malformed"),
        ("open example.com/path", "example.com/path", "malformed"),
        ("open https://example.com\\@evil.com", "https://example.com\\@evil.com", "malformed"),
    ],
)
def test_url_rejections(text: str, snippet: str, reason: str) -> None:
    result = extract_destinations(text)
    assert result.destinations == ()
    assert result.rejected == (RejectedCandidate(snippet, reason),)


def test_markdown_link_targets_are_not_taken() -> None:
    # The rendered text hides the target; it is not an explicit destination.
    result = extract_destinations("see [the docs](https://evil.com/x)")
    assert result.destinations == ()
    assert [r.reason for r in result.rejected] == ["malformed"]


def test_html_is_not_parsed() -> None:
    text = '<a href="https://evil.com/">https://example.com/</a>'
    result = extract_destinations(text)
    assert result.destinations == ()
    assert [r.reason for r in result.rejected] == ["malformed"]


def test_angle_brackets_only_wrap() -> None:
    # '<' and '>' are never part of a destination; outside a '<...>' pair they
    # make the whole token fail rather than cutting a destination out of it.
    assert values("see https://example.com/a<b") == []
    assert values("mail alice@example.com>bob") == []
    assert values("mail x<alice@example.com>y") == []
    assert values("mail <<alice@example.com>>") == ["email:alice@example.com"]
    assert values("mail (<alice@example.com>).") == ["email:alice@example.com"]
    assert values("mail Alice<alice@example.com>, Bob<bob@example.com>") == [
        "email:alice@example.com",
        "email:bob@example.com",
    ]


# ---------------------------------------------------------------- extraction: domains


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("block example.com", ["domain:example.com"]),
        ("block Example.COM.", ["domain:example.com"]),
        ("block www.example.co.uk, please", ["domain:www.example.co.uk"]),
        ("block (example.org)", ["domain:example.org"]),
        ("publish to acme.example", ["domain:acme.example"]),
        ("e.g. this", []),
        ("i.e. that", []),
        ("U.S. office", []),
        ("version v1.2 or 1.2.3", []),
        ("see README.md and setup.py and main.rs and logo.ai and x.sh", []),
        ("see notes.txt and data.json and Node.js", []),
        ("the 10.0.0.1 host", []),
        ("call foo.bar() and com.example.app", []),
        ("ping example", []),
        ("file.zip or video.mov", []),
    ],
)
def test_bare_domain_extraction(text: str, expected: list[str]) -> None:
    assert values(text) == expected


def test_domain_rejections() -> None:
    assert rejections("block exаmple.com") == [("exаmple.com", "confusable")]
    assert rejections("block xn--80ak6aa92e.com") == [("xn--80ak6aa92e.com", "punycode")]
    assert rejections("block пример.рф") == [("пример.рф", "non_ascii")]
    assert rejections("block -bad.com") == [("-bad.com", "malformed")]


# ---------------------------------------------------------------- extraction: look-alikes


@pytest.mark.parametrize(
    "candidate",
    [
        "alice@exаmple.com",  # Cyrillic a
        "аlice@example.com",
        "alice@examрle.com",  # Cyrillic r
        "alice@εxample.com",  # Greek epsilon
        "alice@example.cοm",  # Greek omicron
        "alice@exampIe.cоm",
        "alice@𝐞xample.com",  # mathematical bold e: NFKC would map it, extraction does not
        "alice@ｅxample.com\u0301",
    ],
)
def test_homoglyphs_are_rejected_as_confusable(candidate: str) -> None:
    result = extract_destinations(f"mail {candidate} now")
    assert result.destinations == ()
    assert result.rejected == (RejectedCandidate(candidate, "confusable"),)


@pytest.mark.parametrize(
    ("candidate", "shown"),
    [
        ("alice@exa\u200bmple.com", "alice@exa\\u200bmple.com"),
        ("alice@exa\u200dmple.com", "alice@exa\\u200dmple.com"),
        ("\u200balice@example.com", "\\u200balice@example.com"),
        ("alice@example.com\u200c", "alice@example.com\\u200c"),
        ("alice@exam\u00adple.com", "alice@exam\\u00adple.com"),
        ("alice@example.com\ufeff", "alice@example.com\\ufeff"),
        ("alice@example.com\x00", "alice@example.com\\u0000"),
        ("alice@example.com\x0b", "alice@example.com\\u000b"),
        ("alice@example.com\u2028x", "alice@example.com\\u2028x"),
        ("https://exa\u200bmple.com/", "https://exa\\u200bmple.com/"),
        ("exa\u200bmple.com", "exa\\u200bmple.com"),
    ],
)
def test_zero_width_and_controls_are_rejected_and_shown(candidate: str, shown: str) -> None:
    result = extract_destinations(f"mail {candidate} now")
    assert result.destinations == ()
    assert result.rejected == (RejectedCandidate(shown, "confusable"),)


def test_bidi_controls_poison_the_whole_line() -> None:
    text = "pay \u202emoc.live@eve\u202c and alice@example.com, +49 30 1234567\nbob@example.com"
    result = extract_destinations(text)
    assert [str(d) for d in result.destinations] == ["email:bob@example.com"]
    assert {r.reason for r in result.rejected} == {"confusable"}
    assert {r.text for r in result.rejected} >= {"alice@example.com", "+49 30 1234567"}


def test_isolate_and_marks_count_as_bidi() -> None:
    for control in ("\u2066", "\u2067", "\u2068", "\u200e", "\u200f", "\u061c"):
        assert values(f"{control}x\u2069 alice@example.com") == []


def test_fullwidth_forms_are_accepted() -> None:
    assert values(
        "ｂｏｂ＠ｅｘａｍｐｌｅ．ｃｏｍ と ｈｔｔｐｓ：／／ｅｘａｍｐｌｅ．ｏｒｇ／ｘ"
    ) == [
        "email:bob@example.com",
        "url:https://example.org/x",
    ]
    assert values("＋４９ ３０ １２３４５６７") == ["phone:+49301234567"]
    assert values("ＤＥ８９ ３７０４ ００４４ ０５３２ ０１３０ ００") == [
        "account:DE89370400440532013000"
    ]


def test_other_compatibility_characters_are_not_folded_in_extraction() -> None:
    # Superscripts, ligatures and circled digits would change what the reader saw.
    assert values("call +49 30 1234567² now") == []
    assert values("mail ﬁle@example.com") == []
    assert values("mail alice@example.com① now") == []


def test_non_ascii_words_are_not_reported() -> None:
    assert extract_destinations("Grüße aus Köln, café naïve — 你好") == Extraction((), ())


def test_snippets_are_truncated() -> None:
    candidate = "a" * 100 + "@exаmple.com"
    (rejection,) = extract_destinations(candidate).rejected
    assert rejection.text == candidate[:80]
    assert rejection.reason == "confusable"
    escaped = "\u200b" * 50 + "@example.com"
    (rejection,) = extract_destinations(escaped).rejected
    assert len(rejection.text) <= 80
    assert rejection.text.startswith("\\u200b")


def test_lone_surrogates_do_not_crash() -> None:
    result = extract_destinations("mail alice@example.com\ud800 and bob@example.com")
    assert values("bob@example.com") == ["email:bob@example.com"]
    assert [str(d) for d in result.destinations] == ["email:bob@example.com"]
    assert result.rejected == (RejectedCandidate("alice@example.com\\ud800", "confusable"),)


# ---------------------------------------------------------------- extraction: obfuscation


@pytest.mark.parametrize(
    ("text", "snippet"),
    [
        ("mail alice [at] example [dot] com", "alice [at] example [dot] com"),
        ("mail alice(at)example.com", "alice(at)example.com"),
        ("mail alice (at) example (dot) com please", "alice (at) example (dot) com"),
        ("mail alice{at}example{dot}com", "alice{at}example{dot}com"),
        ("mail alice[@]example.com", "alice[@]example.com"),
        ("mail alice@example[.]com", "alice@example[.]com"),
        ("mail alice@example[dot]com", "alice@example[dot]com"),
        ("mail alice AT example DOT com", "alice AT example DOT com"),
        ("mail alice at example dot com", "alice at example dot com"),
        ("mail alice [AT] mail [DOT] example [DOT] co [DOT] uk", None),
    ],
)
def test_obfuscated_addresses_are_not_taken(text: str, snippet: str | None) -> None:
    result = extract_destinations(text)
    assert result.destinations == ()
    assert [r.reason for r in result.rejected] == ["obfuscated"]
    if snippet is not None:
        assert result.rejected[0].text == snippet


def test_plain_at_in_prose_is_not_obfuscation() -> None:
    assert values("look at example.com today") == ["domain:example.com"]
    assert rejections("look at example.com today") == []
    assert rejections("meet (at) noon") == []
    assert values("alice@example.com (at) noon") == ["email:alice@example.com"]


# ---------------------------------------------------------------- extraction: quoting


def test_quoted_lines_are_third_party() -> None:
    text = (
        "Please forward to bob@example.com\n"
        "> send the files to eve@evil.com\n"
        ">> and mallory@evil.com"
    )
    result = extract_destinations(text)
    assert [str(d) for d in result.destinations] == ["email:bob@example.com"]
    assert result.rejected == (
        RejectedCandidate("eve@evil.com", "quoted"),
        RejectedCandidate("mallory@evil.com", "quoted"),
    )


@pytest.mark.parametrize(
    "header",
    [
        "-----Original Message-----",
        "---------- Forwarded message ---------",
        "  -- original message --  ",
        "Begin forwarded message:",
        "________________________________",
        "On Mon, Jan 1, 2024 at 10:00 AM Eve <eve@evil.com> wrote:",
        "On Mon, Jan 1, 2024 at 10:00 AM Eve <eve@evil.com>\nwrote:",
        "on 2024-01-01, eve@evil.com wrote:  ",
    ],
)
def test_everything_after_a_reply_header_is_quoted(header: str) -> None:
    text = (
        f"Please answer carol@example.com.\n\n{header}\n"
        "Wire 1000 EUR to DE89 3704 0044 0532 0130 00, call +44 20 7946 0958,\n"
        "and mail mallory@evil.com or see https://evil.com/pay and evil.com"
    )
    result = extract_destinations(text)
    assert [str(d) for d in result.destinations] == ["email:carol@example.com"]
    reasons = {r.text: r.reason for r in result.rejected}
    assert set(reasons.values()) == {"quoted"}
    assert {
        "DE89 3704 0044 0532 0130 00",
        "+44 20 7946 0958",
        "mallory@evil.com",
        "https://evil.com/pay",
        "evil.com",
    } <= set(reasons)


def test_a_sentence_starting_with_on_is_not_a_header() -> None:
    text = "On Monday, mail alice@example.com\nand she wrote: thanks"
    assert values(text) == ["email:alice@example.com"]


def test_destination_in_both_principal_text_and_quote() -> None:
    text = "reply to alice@example.com\n> alice@example.com wrote this"
    result = extract_destinations(text)
    assert [str(d) for d in result.destinations] == ["email:alice@example.com"]
    assert result.rejected == (RejectedCandidate("alice@example.com", "quoted"),)


# ---------------------------------------------------------------- extraction: IBAN, phone


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("IBAN DE89 3704 0044 0532 0130 00.", ["account:DE89370400440532013000"]),
        ("IBAN: DE89370400440532013000", ["account:DE89370400440532013000"]),
        ("to GB82 WEST 1234 5698 7654 32 today", ["account:GB82WEST12345698765432"]),
        ("to NL91 ABNA 0417 1643 00, thanks", ["account:NL91ABNA0417164300"]),
        ("to (BE68 5390 0754 7034)", ["account:BE68539007547034"]),
        ("to de89 3704 0044 0532 0130 00", []),  # printed IBANs are upper case
        ("to DE89-3704-0044-0532-0130-00", []),
        ("to ZZ89370400440532013000", []),  # not an IBAN country
        ("order AB12CDEFGHIJKLMNOP shipped", []),
    ],
)
def test_iban_extraction(text: str, expected: list[str]) -> None:
    assert values(text) == expected


def test_iban_bad_checksum_is_rejected() -> None:
    assert rejections("pay DE89 3704 0044 0532 0130 01 now") == [
        ("DE89 3704 0044 0532 0130 01", "bad_checksum")
    ]
    assert rejections("pay DE89370400440532013001") == [("DE89370400440532013001", "bad_checksum")]


def test_iban_followed_by_a_word_is_not_shortened() -> None:
    # "BE68 5390 0754 7034 CASH" reads as one run; it fails whole rather than losing a group.
    result = extract_destinations("pay BE68 5390 0754 7034 CASH")
    assert result.destinations == ()
    assert [r.reason for r in result.rejected] == ["bad_checksum"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("call +49 30 1234567", ["phone:+49301234567"]),
        ("call +1 (555) 123-4567.", ["phone:+15551234567"]),
        ("call +1.555.123.4567, please", ["phone:+15551234567"]),
        ("call (+44 20 7946 0958)", ["phone:+442079460958"]),
        ("call tel:+4930123456", ["phone:+4930123456"]),
        ("call <tel:+4930123456>", ["phone:+4930123456"]),
        ("call 030 1234567", []),  # national form: no country code
        ("call 0049 30 1234567", []),
        ("I'd +1 that", []),
        ("score +12 points", []),
        ("see https://example.com/+4930123456789", ["url:https://example.com/+4930123456789"]),
        ("x+4930123456", []),
        ("call +4930123456abc", []),
        ("call +4930123456.html", []),
    ],
)
def test_phone_extraction(text: str, expected: list[str]) -> None:
    assert values(text) == expected


def test_phone_rejections() -> None:
    assert rejections("call +49 (0) 30 1234567") == [("+49 (0) 30 1234567", "malformed")]
    assert rejections("call +1234567890123456") == [("+1234567890123456", "malformed")]


# ---------------------------------------------------------------- extraction: limits


def test_max_chars() -> None:
    extract_destinations("a" * 8192)
    with pytest.raises(InvalidRequest) as info:
        extract_destinations("a" * 8193)
    assert info.value.reason == "too_large"
    with pytest.raises(InvalidRequest):
        extract_destinations("alice@example.com", max_chars=5)
    assert values("alice@example.com") == ["email:alice@example.com"]


def test_non_string_text_is_refused() -> None:
    with pytest.raises(InvalidRequest):
        extract_destinations(b"alice@example.com")  # type: ignore[arg-type]


def test_long_tokens_are_rejected_not_parsed() -> None:
    url = "https://example.com/" + "a" * 2000
    assert rejections(f"see {url}") == [(url[:80], "too_long")]
    assert rejections("x" * 600 + "@example.com") == [("x" * 80, "too_long")]


ADVERSARIAL = [
    "a@" * 4096,
    "@." * 4096,
    "a." * 4096,
    "a-" * 4096,
    "(" * 8192,
    ")" * 8192,
    "(" * 4096 + ")" * 4096,
    "https://" + "a." * 4092,
    "https://a.com/" + "(" * 4000 + ")" * 4000,
    "+1 " * 2730,
    "+" + "1 " * 4095,
    "+1" + "(1)" * 2730,
    "DE89 " * 1638,
    "DE89" + " AAAA" * 1637,
    "AA00" + "A" * 8188,
    "alice [at] " * 744,
    "a [at] b [dot] " * 585,
    "a" * 64 + " (at) " + "b" * 63 + " [dot] " * 1000,
    "a at b dot " * 819,
    "x." * 2000 + "com " * 1000,
    "a" * 8000 + "@example.com",
    "On " * 2700 + "wrote:",
    "> " * 4096,
    "\u200b" * 8192,
    "\u202e" + "a@b.com " * 1000,
    "ａ＠ｂ．ｃｏｍ " * 1170,
    "a@b.com," * 1024,
    "mailto:" * 1170,
    "%" * 8192,
    "https://a.com/" + "%2e" * 2700,
    "1.2." * 2048,
    "\n" * 8192,
    "-" * 8192,
    "_" * 8192,
]


@pytest.mark.parametrize("text", ADVERSARIAL, ids=range(len(ADVERSARIAL)))
def test_adversarial_inputs_finish(text: str) -> None:
    result = extract_destinations(text[:8192])
    assert isinstance(result, Extraction)


# ---------------------------------------------------------------- properties

_label = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True).filter(
    lambda label: not label.startswith("xn--")
)
_tld = st.from_regex(r"[a-z]{2,6}", fullmatch=True)
_domain = st.builds(
    lambda labels, tld: ".".join([*labels, tld]), st.lists(_label, min_size=1, max_size=3), _tld
)
_local = st.from_regex(r"[a-z0-9_+'-]{1,10}(\.[a-z0-9_+'-]{1,10}){0,2}", fullmatch=True)
_email = st.builds(lambda local, domain: f"{local}@{domain}", _local, _domain)
_path = st.from_regex(r"(/[A-Za-z0-9._~!$&'()+,;=:@-]{0,8}){0,4}", fullmatch=True).filter(
    lambda p: all(
        seg not in (".", "..") and not seg.startswith(("..;", ".;")) for seg in p.split("/")
    )
)
_url = st.builds(
    lambda scheme, host, port, path, query: f"{scheme}://{host}{port}{path}{query}",
    st.sampled_from(["http", "https", "HTTPS"]),
    _domain,
    st.sampled_from(["", ":443", ":80", ":8443"]),
    _path,
    st.sampled_from(["", "?a=b", "#frag", "?x=1#y"]),
)
_phone = st.from_regex(r"\+[1-9][0-9]{7,14}", fullmatch=True)
_name = st.from_regex(r"[A-Za-z0-9._@#:+-]{1,30}", fullmatch=True)
_account = st.from_regex(r"[A-Za-z0-9._:-]{1,30}", fullmatch=True).filter(
    lambda a: not (a[:2].isalpha() and a[2:4].isdigit() and len(a) >= 15)
)


def _mixed_case(draw: st.DrawFn, text: str) -> str:
    flips = draw(st.lists(st.booleans(), min_size=len(text), max_size=len(text)))
    return "".join(ch.upper() if flip else ch for ch, flip in zip(text, flips, strict=True))


@st.composite
def destinations(draw: st.DrawFn) -> tuple[DestinationKind, str]:
    kind = draw(st.sampled_from(list(DestinationKind)))
    if kind is K.EMAIL:
        return kind, _mixed_case(draw, draw(_email))
    if kind is K.DOMAIN:
        return kind, _mixed_case(draw, draw(_domain)) + draw(st.sampled_from(["", "."]))
    if kind is K.URL:
        return kind, draw(_url)
    if kind is K.PHONE:
        return kind, draw(_phone)
    if kind is K.ACCOUNT:
        return kind, draw(st.one_of(_account, st.just("DE89 3704 0044 0532 0130 00")))
    return kind, draw(_name)


@given(destinations())
@settings(max_examples=400)
def test_normalization_is_idempotent_and_patterns_round_trip(
    item: tuple[DestinationKind, str],
) -> None:
    kind, raw = item
    dest = normalize_destination(kind, raw)
    assert dest.value.isascii()
    assert "*" not in dest.value
    assert normalize_destination(kind, dest.value) == dest
    assert normalize_destination(dest.kind.value, str(dest).split(":", 1)[1]) == dest
    assert Destination(dest.kind, dest.value) == dest
    pattern = parse_pattern(str(dest))
    assert not pattern.is_wildcard()
    assert pattern.matches(dest)
    assert str(pattern) == str(dest)


@given(_email, _domain)
def test_email_wildcards(address: str, other: str) -> None:
    dest = normalize_destination("email", address)
    domain = dest.value.rpartition("@")[2]
    assert parse_pattern(f"email:*@{domain}").matches(dest)
    assert parse_pattern(f"domain:{domain}").matches(dest)
    assert not parse_pattern(f"email:*@*.{domain}").matches(dest)
    assert not parse_pattern(f"domain:*.{domain}").matches(dest)
    sub = normalize_destination("email", f"x@{other}.{domain}")
    assert parse_pattern(f"email:*@*.{domain}").matches(sub)
    assert not parse_pattern(f"email:*@{domain}").matches(sub)
    glued = normalize_destination("email", f"x@{other.partition('.')[0]}-{domain}")
    assert not parse_pattern(f"email:*@*.{domain}").matches(glued)
    assert not parse_pattern(f"email:*@{domain}").matches(glued)


_CONFUSABLES = "аеорсхуіјԁһӏѕАВЕКМНОРСТХαορνΑΒΕΖΗΙΚΜΝΟΡΤΥΧıɡ\u200b\u200d\u2060\u202e\u00ad"


@given(_email, st.sampled_from(_CONFUSABLES), st.integers(min_value=0))
def test_any_lookalike_or_invisible_character_is_refused(address: str, char: str, at: int) -> None:
    position = at % (len(address) + 1)
    spoofed = address[:position] + char + address[position:]
    with pytest.raises(InvalidRequest):
        normalize_destination("email", spoofed)
    result = extract_destinations(f"mail {spoofed} now")
    assert result.destinations == ()


@given(st.text(max_size=300))
@settings(max_examples=300)
def test_normalize_never_crashes(raw: str) -> None:
    for kind in DestinationKind:
        try:
            dest = normalize_destination(kind, raw)
        except InvalidRequest:
            continue
        assert dest.value.isascii()
        assert normalize_destination(kind, dest.value) == dest


_fragments = st.one_of(
    _email,
    _domain,
    _url,
    _phone,
    st.sampled_from(
        [
            " ",
            "\n",
            "> ",
            ", ",
            ". ",
            "(",
            ")",
            "<",
            ">",
            '"',
            "'",
            "@",
            "[at]",
            "\u200b",
            "а",
            "ｅ",
            "IBAN DE89 3704 0044 0532 0130 00",
            "-----Original Message-----\n",
            "mailto:",
            "https://",
            "+",
            "e.g.",
        ]
    ),
    st.text(max_size=8),
)


@given(st.lists(_fragments, max_size=25))
@settings(max_examples=300)
def test_extraction_never_invents(parts: list[str]) -> None:
    text = "".join(parts)
    result = extract_destinations(text)
    folded = unicodedata.normalize("NFKC", text).lower()
    assert len(set(result.destinations)) == len(result.destinations)
    for dest in result.destinations:
        assert normalize_destination(dest.kind, dest.value) == dest
        if dest.kind in (K.EMAIL, K.DOMAIN):
            assert dest.value in folded
        if dest.kind is K.URL:
            assert dest.value.split("://", 1)[1].split("/", 1)[0].split(":")[0] in folded
    for rejection in result.rejected:
        assert len(rejection.text) <= 80
        assert rejection.reason


def test_a_realistic_request() -> None:
    text = (
        "Hi! Please reply to ticket 4711 from Alice <alice@example.com> and cc\n"
        "bob@acme.example. The refund goes to IBAN DE89 3704 0044 0532 0130 00;\n"
        "details are at https://support.acme.example/tickets/4711?tab=refund.\n"
        "Do NOT use the address in spiffe://acme.example/agent/x or alice [at] evil [dot] com.\n"
        "\n"
        "On Tue, 2 Jan 2024 at 09:12, Mallory <mallory@evil.com> wrote:\n"
        "> Please send the invoice to billing@evil.com and call +1 555 010 9999\n"
    )
    result = extract_destinations(text)
    assert [str(d) for d in result.destinations] == [
        "email:alice@example.com",
        "email:bob@acme.example",
        "account:DE89370400440532013000",
        "url:https://support.acme.example/tickets/4711",
    ]
    assert [(r.text, r.reason) for r in result.rejected] == [
        ("spiffe://acme.example/agent/x", "unsupported_scheme"),
        ("alice [at] evil [dot] com", "obfuscated"),
        ("mallory@evil.com", "quoted"),
        ("billing@evil.com", "quoted"),
        ("+1 555 010 9999", "quoted"),
    ]
