"""Destinations: where an agent's actions may send things, and how Remit reads them.

A task's mandate lists allowed destinations as patterns (``email:*@example.com``,
``url:https://api.example.com/v1/*``). A tool catalog says which call arguments
are destinations and of which kind; each one is normalized here and checked
against the mandate. Remit also extracts the destinations a principal wrote
explicitly in the request text ("request-derived destinations").

Security rules, in short (docs/destinations.md has the full list):

* Normalization is canonical: NFKC first, then ASCII only, then per-kind rules,
  so two spellings of one address compare equal and look-alikes never do.
  Control, zero-width and bidi characters are refused, never stripped.
* Matching compares normalized values; wildcards are few and anchored
  (``*@example.com``, ``*@*.example.com``, ``*.example.com``, ``url:…/*``).
* Extraction is conservative: a candidate is taken only when it stands alone as
  a whole word and validates in full; anything doubtful is listed in
  ``rejected`` with a short reason and never becomes a destination.

Messages never echo the input: a destination may be personal data.
"""

from __future__ import annotations

import re
import string
import unicodedata
from dataclasses import dataclass
from enum import StrEnum
from typing import NoReturn

from remit.errors import InvalidRequest

MAX_DESTINATION_CHARS = 512
"""Longest raw input ``normalize_destination`` and ``parse_pattern`` accept."""

DEFAULT_MAX_TEXT_CHARS = 8192
"""Default bound on the request text ``extract_destinations`` reads."""

MAX_SNIPPET_CHARS = 80
"""Longest ``RejectedCandidate.text``."""


class DestinationKind(StrEnum):
    EMAIL = "email"
    URL = "url"
    DOMAIN = "domain"
    ACCOUNT = "account"
    USER = "user"
    CHANNEL = "channel"
    PHONE = "phone"


# ---------------------------------------------------------------- errors

# The ``problem`` detail on every InvalidRequest raised here. Extraction reports
# the same words as rejection reasons.
_REPORTED_PROBLEMS = frozenset(
    {
        "confusable",
        "non_ascii",
        "too_long",
        "userinfo",
        "unsupported_scheme",
        "ip_literal",
        "bad_checksum",
    }
)


def _fail(problem: str, message: str) -> NoReturn:
    raise InvalidRequest(message, reason="bad_destination", problem=problem)


def _parse_kind(kind: object) -> DestinationKind:
    if isinstance(kind, DestinationKind):
        return kind
    if isinstance(kind, str):
        try:
            return DestinationKind(kind)
        except ValueError:
            pass
    _fail(
        "bad_kind", "destination kind must be one of " + ", ".join(k.value for k in DestinationKind)
    )


# ---------------------------------------------------------------- text checks

# Control, format (zero-width, bidi, soft hyphen, BOM, tags), surrogate,
# private-use, unassigned, and line/paragraph separators.
_FORBIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})
_BIDI_CONTROLS = frozenset(
    "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
)


def _has_forbidden(text: str) -> bool:
    if text.isascii():
        return any(ch < " " or ch == "\x7f" for ch in text)
    return any(unicodedata.category(ch) in _FORBIDDEN_CATEGORIES for ch in text)


def _non_ascii_problem(text: str) -> str:
    """``confusable`` when non-ASCII letters or marks mix with ASCII letters, else ``non_ascii``."""
    ascii_letter = any(ch.isascii() and ch.isalpha() for ch in text)
    other_letter = any(not ch.isascii() and unicodedata.category(ch)[0] in "LM" for ch in text)
    return "confusable" if ascii_letter and other_letter else "non_ascii"


def _prepare(raw: object, what: str) -> str:
    """The common front half of normalization: type, size, invisibles, NFKC, ASCII."""
    if not isinstance(raw, str):
        _fail("not_text", f"{what} destination must be a string")
    if len(raw) > MAX_DESTINATION_CHARS:
        _fail("too_long", f"{what} destination is too long (max {MAX_DESTINATION_CHARS})")
    if _has_forbidden(raw):
        _fail(
            "confusable",
            f"{what} destination contains control, invisible or direction-changing characters",
        )
    text = unicodedata.normalize("NFKC", raw)
    if len(text) > MAX_DESTINATION_CHARS:
        _fail("too_long", f"{what} destination is too long (max {MAX_DESTINATION_CHARS})")
    if not text.isascii():
        _fail(
            _non_ascii_problem(text),
            f"{what} destination must be ASCII after NFKC normalization (look-alikes are refused)",
        )
    if _has_forbidden(text):  # pragma: no cover - NFKC never makes controls from non-controls
        _fail("confusable", f"{what} destination contains control characters")
    text = text.strip(" ")
    if not text:
        _fail("malformed", f"{what} destination is empty")
    return text


# ---------------------------------------------------------------- domains

_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
# A last label like these makes a host an IPv4 address to WHATWG URL parsers.
_NUMERIC_TLD = re.compile(r"[0-9]+|0x[0-9a-f]*")


def _check_a_label(label: str) -> None:
    """An ``xn--`` label must be canonical punycode for a visible non-ASCII name."""
    try:
        decoded = label[4:].encode("ascii").decode("punycode")
        canonical = decoded.encode("punycode").decode("ascii") == label[4:]
    except (UnicodeError, ValueError, IndexError, OverflowError):
        canonical = False
        decoded = ""
    if not canonical or not decoded or decoded.isascii() or _has_forbidden(decoded):
        _fail("malformed", "domain has an invalid punycode label")


def _domain(text: str, what: str) -> str:
    host = text.lower()
    if host.startswith("["):
        _fail("ip_literal", f"{what} destination must name a DNS host, not an IP address")
    if host.endswith("."):
        host = host[:-1]
    if len(host) > 253:
        _fail("too_long", f"{what} destination has a host name that is too long")
    labels = host.split(".")
    if len(labels) < 2 or not all(_LABEL.fullmatch(label) for label in labels):
        _fail(
            "malformed",
            f"{what} destination needs a DNS name with at least one dot "
            "(labels of a-z, 0-9 and inner '-', 1-63 characters)",
        )
    if _NUMERIC_TLD.fullmatch(labels[-1]):
        _fail("ip_literal", f"{what} destination must name a DNS host, not an IP address")
    for label in labels:
        if label.startswith("xn--"):
            _check_a_label(label)
    return host


def _domain_matches(pattern: str, host: str) -> bool:
    if pattern.startswith("*."):
        return host.endswith(pattern[1:])  # ".example.com": strict subdomains only
    return host == pattern


# ---------------------------------------------------------------- emails

# A deliberately narrow dot-atom: no '%' or '!' (source routing), no '*' (wildcards),
# no quoted local parts, comments or IP literals.
_LOCAL = re.compile(r"[a-z0-9_+'-]+(?:\.[a-z0-9_+'-]+)*")


def _email(text: str) -> str:
    address = text.lower()
    if address.count("@") != 1:
        _fail("malformed", "email destination must be one 'local@domain' address")
    local, _, domain = address.partition("@")
    if len(local) > 64:
        _fail("too_long", "email destination has a local part longer than 64")
    if not _LOCAL.fullmatch(local):
        _fail("malformed", "email destination has a malformed local part")
    value = f"{local}@{_domain(domain, 'email')}"
    if len(value) > 254:
        _fail("too_long", "email destination is too long (max 254)")
    return value


# ---------------------------------------------------------------- URLs

_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):")
_DEFAULT_PORTS = {"http": 80, "https": 443}
_URL_FORBIDDEN = frozenset(' "<>\\^`{|}')
# RFC 3986 pchar and '/', except '*' (kept for pattern wildcards).
_PATH = re.compile(r"[A-Za-z0-9\-._~!$&'()+,;=:@/%]*")
_PERCENT = re.compile(r"%([0-9A-Fa-f]{2})")
_UNRESERVED = frozenset(string.ascii_letters + string.digits + "-._~")


def _decode_unreserved(match: re.Match[str]) -> str:
    code = int(match.group(1), 16)
    char = chr(code)
    if char in _UNRESERVED:
        return char
    if code < 0x20 or code == 0x7F or char in "/\\%":
        # Encoded separators, controls and double encoding are classic prefix bypasses.
        _fail("malformed", "url destination path has a refused percent-encoding")
    return "%" + match.group(1).upper()


def _url_path(path: str) -> str:
    if not path.startswith("/") or not _PATH.fullmatch(path):
        _fail("malformed", "url destination has a malformed path")
    if path.count("%") != len(_PERCENT.findall(path)):
        _fail("malformed", "url destination path has a malformed percent-encoding")
    path = _PERCENT.sub(_decode_unreserved, path)
    for segment in path.split("/"):
        if segment.split(";", 1)[0] in (".", ".."):
            _fail("malformed", "url destination path has '.' or '..' segments")
    return path


def _url(text: str) -> str:
    match = _SCHEME.match(text)
    if match is None:
        _fail("malformed", "url destination must start with http:// or https://")
    scheme = match.group(1).lower()
    if scheme not in _DEFAULT_PORTS:
        _fail("unsupported_scheme", "url destination must use http or https")
    rest = text[match.end() :]
    if not rest.startswith("//"):
        _fail("malformed", "url destination must start with http:// or https://")
    if any(ch in _URL_FORBIDDEN for ch in text):
        _fail("malformed", "url destination has characters that must be percent-encoded")
    rest = rest[2:]
    cut = min((i for i in (rest.find(sep) for sep in "/?#") if i != -1), default=len(rest))
    authority, tail = rest[:cut], rest[cut:]
    if "@" in authority:
        _fail("userinfo", "url destination must not carry user information ('user@host')")
    if authority.startswith("["):
        _fail("ip_literal", "url destination must name a DNS host, not an IP address")
    host, colon, port_text = authority.partition(":")
    port = _DEFAULT_PORTS[scheme]
    if colon:
        if not port_text.isdigit() or len(port_text) > 5 or not 1 <= int(port_text) <= 65535:
            _fail("malformed", "url destination has a malformed port")
        port = int(port_text)
    host = _domain(host, "url")
    path_end = min((i for i in (tail.find(sep) for sep in "?#") if i != -1), default=len(tail))
    path = _url_path(tail[:path_end] or "/")
    port_part = "" if port == _DEFAULT_PORTS[scheme] else f":{port}"
    return f"{scheme}://{host}{port_part}{path}"


def _url_host(value: str) -> str:
    authority = value.split("://", 1)[1].split("/", 1)[0]
    return authority.partition(":")[0]


# ---------------------------------------------------------------- accounts, phones, names

_IBAN_COUNTRY_CODES = (
    "AD AE AL AT AZ BA BE BG BH BI BR BY CH CR CY CZ DE DJ DK DO EE EG ES FI FK FO FR "
    "GB GE GI GL GR GT HN HR HU IE IL IQ IS IT JO KW KZ LB LC LI LT LU LV LY MC MD ME "
    "MK MN MR MT MU NI NL NO OM PK PL PS PT QA RO RS RU SA SC SD SE SI SK SM SO ST SV "
    "TL TN TR UA VA VG XK YE"
)
_IBAN_COUNTRIES = frozenset(_IBAN_COUNTRY_CODES.split())
_IBAN_SHAPE = re.compile(r"[A-Z]{2}[0-9]{2}[A-Z0-9]{11,30}")
_OPAQUE_ACCOUNT = re.compile(r"[A-Za-z0-9._:-]{1,64}")
_OPAQUE_NAME = re.compile(r"[A-Za-z0-9._@#:+-]{1,128}")
_PHONE_SHAPE = re.compile(r"\+[0-9]++(?:[ .\-]?+(?:\([0-9]++\)|[0-9]++))*+")


def _iban_checksum_ok(iban: str) -> bool:
    if not "02" <= iban[2:4] <= "98":
        return False
    rearranged = iban[4:] + iban[:4]
    return int("".join(str(int(ch, 36)) for ch in rearranged)) % 97 == 1


def _looks_like_iban(compact: str) -> bool:
    return compact[:2] in _IBAN_COUNTRIES and _IBAN_SHAPE.fullmatch(compact) is not None


def _account(text: str) -> str:
    compact = text.replace(" ", "").upper()
    if _looks_like_iban(compact):
        if not _iban_checksum_ok(compact):
            _fail("bad_checksum", "account destination looks like an IBAN but its checksum fails")
        return compact
    if not _OPAQUE_ACCOUNT.fullmatch(text):
        _fail(
            "malformed",
            "account destination must be an IBAN or 1-64 of A-Z, a-z, 0-9, '.', '_', ':', '-'",
        )
    return text


def _phone(text: str) -> str:
    if not _PHONE_SHAPE.fullmatch(text):
        _fail("malformed", "phone destination must be '+' and digits (E.164)")
    if "(0" in text:
        _fail("malformed", "phone destination has a bracketed trunk prefix such as '(0)'")
    digits = "".join(ch for ch in text if ch.isdigit())
    if not 8 <= len(digits) <= 15 or digits[0] == "0":
        _fail("malformed", "phone destination must have 8-15 digits after '+' (E.164)")
    return "+" + digits


def _opaque_name(text: str, kind: DestinationKind) -> str:
    if not _OPAQUE_NAME.fullmatch(text):
        _fail(
            "malformed",
            f"{kind.value} destination must be 1-128 of A-Z, a-z, 0-9 and . _ @ # : + -",
        )
    return text


def _normalize_value(kind: DestinationKind, raw: object) -> str:
    text = _prepare(raw, kind.value)
    if kind is DestinationKind.EMAIL:
        return _email(text)
    if kind is DestinationKind.URL:
        return _url(text)
    if kind is DestinationKind.DOMAIN:
        return _domain(text, "domain")
    if kind is DestinationKind.ACCOUNT:
        return _account(text)
    if kind is DestinationKind.PHONE:
        return _phone(text)
    return _opaque_name(text, kind)


# ---------------------------------------------------------------- destinations


@dataclass(frozen=True, slots=True)
class Destination:
    """One normalized destination. Construction re-checks that ``value`` is normalized."""

    kind: DestinationKind
    value: str

    def __post_init__(self) -> None:
        kind = _parse_kind(self.kind)
        object.__setattr__(self, "kind", kind)
        if not isinstance(self.value, str) or _normalize_value(kind, self.value) != self.value:
            _fail("not_normalized", "destination value is not in normalized form")

    def __str__(self) -> str:
        return f"{self.kind.value}:{self.value}"


def normalize_destination(kind: DestinationKind | str, raw: object) -> Destination:
    """Normalize ``raw`` as a destination of ``kind``; InvalidRequest(bad_destination) if unsafe."""
    parsed = _parse_kind(kind)
    return Destination(parsed, _normalize_value(parsed, raw))


def _host_of(dest: Destination) -> str | None:
    if dest.kind is DestinationKind.DOMAIN:
        return dest.value
    if dest.kind is DestinationKind.EMAIL:
        return dest.value.rpartition("@")[2]
    if dest.kind is DestinationKind.URL:
        return _url_host(dest.value)
    return None


# ---------------------------------------------------------------- patterns


def _pattern_value(kind: DestinationKind, raw: object) -> str:
    text = _prepare(raw, kind.value)
    if kind is DestinationKind.URL and ("?" in text or "#" in text):
        _fail("malformed", "url patterns must not have a query or fragment")
    if "*" not in text:
        return _normalize_value(kind, text)
    if text == "*":
        _fail("universal", "a bare '*' pattern is refused: name the destinations")
    if kind is DestinationKind.EMAIL:
        lowered = text.lower()
        prefix = "*@*." if lowered.startswith("*@*.") else "*@"
        rest = lowered[len(prefix) :]
        if not lowered.startswith("*@") or "*" in rest:
            _fail("wildcard", "email patterns allow '*' only as '*@domain' or '*@*.domain'")
        return prefix + _domain(rest, "email")
    if kind is DestinationKind.DOMAIN:
        rest = text[2:]
        if not text.startswith("*.") or "*" in rest:
            _fail("wildcard", "domain patterns allow '*' only as '*.domain'")
        return "*." + _domain(rest, "domain")
    if kind is DestinationKind.URL:
        if text.count("*") != 1 or not text.endswith("/*"):
            _fail("wildcard", "url patterns allow '*' only at the end, right after '/'")
        prefix_url = _url(text[:-1])
        if not prefix_url.endswith("/"):  # pragma: no cover - '/*' keeps the trailing slash
            _fail("wildcard", "url patterns allow '*' only at the end, right after '/'")
        return prefix_url + "*"
    _fail("wildcard", f"{kind.value} patterns cannot contain '*'")


@dataclass(frozen=True, slots=True)
class DestinationPattern:
    """An allowed destination in a mandate: an exact value or one anchored wildcard."""

    kind: DestinationKind
    value: str

    def __post_init__(self) -> None:
        kind = _parse_kind(self.kind)
        object.__setattr__(self, "kind", kind)
        if not isinstance(self.value, str) or _pattern_value(kind, self.value) != self.value:
            _fail("not_normalized", "destination pattern is not in normalized form")

    def is_wildcard(self) -> bool:
        return "*" in self.value

    def matches(self, dest: Destination) -> bool:
        if not isinstance(dest, Destination):
            return False
        if self.kind is DestinationKind.DOMAIN:
            host = _host_of(dest)
            return host is not None and _domain_matches(self.value, host)
        if dest.kind is not self.kind:
            return False
        if self.kind is DestinationKind.EMAIL and self.value.startswith("*@"):
            return _domain_matches(self.value[2:], dest.value.rpartition("@")[2])
        if self.kind is DestinationKind.URL and self.value.endswith("*"):
            return dest.value.startswith(self.value[:-1])
        return dest.value == self.value

    def __str__(self) -> str:
        return f"{self.kind.value}:{self.value}"


def parse_pattern(text: object) -> DestinationPattern:
    """Parse ``kind:value``, e.g. ``email:*@example.com``; InvalidRequest(bad_destination)."""
    if not isinstance(text, str):
        _fail("not_text", "destination pattern must be a string")
    kind_text, sep, value = text.partition(":")
    if not sep:
        _fail("malformed", "destination pattern must look like 'kind:value'")
    kind = _parse_kind(kind_text)
    return DestinationPattern(kind, _pattern_value(kind, value))


# ---------------------------------------------------------------- extraction


@dataclass(frozen=True, slots=True)
class RejectedCandidate:
    """Something in the request text that looked like a destination but was not taken."""

    text: str  # the raw snippet, at most 80 characters, invisibles shown as \\uXXXX
    reason: str


@dataclass(frozen=True, slots=True)
class Extraction:
    destinations: tuple[Destination, ...]  # deduplicated, in order of first appearance
    rejected: tuple[RejectedCandidate, ...]


# Fullwidth ASCII forms and Unicode spaces fold to ASCII one character for one,
# exactly as NFKC does, so positions in the folded line are positions in the raw
# line. Every other non-ASCII character is left alone and makes its candidate
# rejected.
_FOLD_TABLE = {code: code - 0xFEE0 for code in range(0xFF01, 0xFF5F)}
_FOLD_TABLE.update({code: 0x20 for code in (0xA0, *range(0x2000, 0x200B), 0x202F, 0x205F, 0x3000)})

_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_TOKEN = re.compile(r"[^ \t\u1680]+")
_MAX_TOKEN = 2 * MAX_DESTINATION_CHARS

_OPENERS = frozenset("([{<>\"'`*«“‘„‹「『【")
_CLOSERS = frozenset(".,;:!?)]}>\"'`*»”’›」』】…")
_PAIRS = {")": "(", "]": "[", "}": "{"}

# Bare domains are taken only with one of these top-level domains, so "e.g.",
# "v1.2", "README.md", "setup.py" or "logo.ai" never become destinations.
_BARE_TLD_NAMES = (
    "com org net edu gov mil int info biz io co dev cloud eu uk de fr nl be ch es se dk fi "
    "ie ca au nz jp us example"
)
_BARE_TLDS = frozenset(_BARE_TLD_NAMES.split())
_DOMAIN_SHAPE = re.compile(r"[a-z0-9-]+(?:\.[a-z0-9-]+)+")

_QUOTE_SEPARATOR = re.compile(
    r"\s*(?:-{2,}\s*(?:original message|forwarded message)\s*-{2,}"
    r"|begin forwarded message:|_{10,})\s*",
    re.IGNORECASE,
)
_WROTE = re.compile(r"\bwrote:\s*\Z", re.IGNORECASE)
_ON = re.compile(r"\s*on\s", re.IGNORECASE)

_B_OPEN = r"[\[({]"
_B_CLOSE = r"[\])}]"
_AT_SEP = (
    rf"(?:\s{{0,3}}{_B_OPEN}\s{{0,3}}(?:at|@)\s{{0,3}}{_B_CLOSE}\s{{0,3}}" r"|\s{1,3}at\s{1,3}|@)"
)
_DOT_SEP = (
    rf"(?:\s{{0,3}}{_B_OPEN}\s{{0,3}}(?:dot|\.)\s{{0,3}}{_B_CLOSE}\s{{0,3}}"
    r"|\s{1,3}dot\s{1,3}|\.)"
)
_OBFUSCATED = re.compile(
    rf"(?<![\w.+@-])[\w.+-]{{1,64}}{_AT_SEP}[a-z0-9-]{{1,63}}(?:{_DOT_SEP}[a-z0-9-]{{1,63}}){{1,8}}",
    re.IGNORECASE | re.ASCII,
)
_OBFUSCATION_MARK = re.compile(
    rf"{_B_OPEN}\s{{0,3}}(?:at|dot|@|\.)\s{{0,3}}{_B_CLOSE}|\sdot\s", re.IGNORECASE | re.ASCII
)

# Phones and IBANs may span spaces, so they are found on the whole line (padded
# with one leading space) and must stand alone: after a space or an opening
# bracket/quote, before optional closing punctuation and a space or line end.
_LEFT = r"(?<=[ \t(\[{<\"'`*])"
_RIGHT = r"(?=[.,;:!?)\]}>\"'`*]*+(?:[ \t]|\Z))"
_PHONE = re.compile(
    rf"(?:{_LEFT}|(?<=[ \t(\[{{<\"'`*][Tt][Ee][Ll]:))"
    r"\+[0-9]++(?:[ .\-]?+(?:\([0-9]++\)|[0-9]++))*+" + _RIGHT
)
_IBAN = re.compile(
    _LEFT + r"[A-Z]{2}[0-9]{2}(?:[A-Z0-9]{11,30}|(?: [A-Z0-9]{4}){2,7}(?: [A-Z0-9]{1,4})?)" + _RIGHT
)

_Classified = tuple[Destination, ...] | str | None


def _snippet(raw: str) -> str:
    """At most 80 characters of ``raw``, with invisible characters made visible."""
    out: list[str] = []
    size = 0
    for ch in raw:
        if unicodedata.category(ch) in _FORBIDDEN_CATEGORIES:
            piece = f"\\u{ord(ch):04x}" if ord(ch) <= 0xFFFF else f"\\U{ord(ch):08x}"
        else:
            piece = ch
        if size + len(piece) > MAX_SNIPPET_CHARS:
            break
        out.append(piece)
        size += len(piece)
    return "".join(out)


def _strip_span(line: str, start: int, end: int) -> tuple[int, int]:
    """Drop wrapping brackets, quotes and trailing sentence punctuation."""
    while start < end and line[start] in _OPENERS:
        start += 1
    while start < end:
        char = line[end - 1]
        if char not in _CLOSERS:
            break
        opener = _PAIRS.get(char)
        if opener is not None and line.count(opener, start, end) >= line.count(char, start, end):
            break  # balanced, as in https://en.wikipedia.org/wiki/Foo_(bar)
        end -= 1
    return start, end


def _angle_split(line: str, start: int, end: int) -> list[tuple[int, int]]:
    """``Alice<alice@example.com>,`` is two tokens; any other use of '<' or '>' is one."""
    token = line[start:end]
    if "<" not in token and ">" not in token:
        return [(start, end)]
    open_at, close_at = token.find("<"), token.rfind(">")
    if (
        token.count("<") == 1
        and token.count(">") == 1
        and open_at < close_at
        and all(ch in _CLOSERS for ch in token[close_at + 1 :])
    ):
        return [(start, start + open_at), (start + open_at + 1, start + close_at)]
    return [(start, end)]


def _looks_like(core: str) -> bool:
    """Whether a token that cannot be taken is worth listing as rejected."""
    visible = "".join(ch for ch in core if unicodedata.category(ch) not in _FORBIDDEN_CATEGORIES)
    low = unicodedata.normalize("NFKC", visible).lower().replace("\u3002", ".")
    at = low.find("@")
    if at > 0 and "." in low[at:]:
        return True
    if "://" in low or low.startswith("www."):
        return True
    if "." in low:
        tld = low.rsplit(".", 1)[1]
        return tld in _BARE_TLDS or any(not ch.isascii() and ch.isalpha() for ch in tld)
    return False


def _extract_one(kind: DestinationKind, raw: str) -> tuple[Destination, ...] | str:
    try:
        dest = normalize_destination(kind, raw)
    except InvalidRequest as exc:
        problem = str(exc.details.get("problem", "malformed"))
        return problem if problem in _REPORTED_PROBLEMS else "malformed"
    host = _host_of(dest)
    if host is not None and any(label.startswith("xn--") for label in host.split(".")):
        return "punycode"  # a reader cannot tell what an IDN in punycode spells
    return (dest,)


def _classify_single(core: str, raw: str) -> _Classified:
    at = core.find("@")
    if at != -1:
        if at == 0 or "." not in core[at:]:
            return None  # "@alice" mentions and the like
        return _extract_one(DestinationKind.EMAIL, raw)
    low = core.lower()
    if _DOMAIN_SHAPE.fullmatch(low) and low.rsplit(".", 1)[1] in _BARE_TLDS:
        return _extract_one(DestinationKind.DOMAIN, raw)
    head = low.split("/", 1)[0]
    if "/" in low and _DOMAIN_SHAPE.fullmatch(head) and head.rsplit(".", 1)[1] in _BARE_TLDS:
        return "malformed"  # a URL without a scheme: not taken
    return None


def _classify_list(core: str, raw: str) -> _Classified:
    """``a@x.com,b@y.com``: every part must be a destination, or none is taken."""
    bounds: list[tuple[int, int]] = []
    start = 0
    for match in re.finditer(r"[,;]", core):
        bounds.append((start, match.start()))
        start = match.end()
    bounds.append((start, len(core)))
    found: list[Destination] = []
    failed = candidate = False
    for a, b in bounds:
        result = _classify_single(core[a:b], raw[a:b]) if a < b else None
        if isinstance(result, tuple):
            found.extend(result)
            candidate = True
        else:
            failed = True
            candidate = candidate or result is not None
    if not failed:
        return tuple(found)
    return "malformed" if candidate else None


def _classify(core: str, raw: str) -> _Classified:
    """One principal-written token: destinations, a rejection reason, or nothing."""
    if _has_forbidden(core):
        return "confusable" if _looks_like(core) else None
    if not core.isascii():
        return _non_ascii_problem(core) if _looks_like(core) else None
    low = core.lower()
    if low.startswith(("http://", "https://")):
        return _extract_one(DestinationKind.URL, raw)
    if _OBFUSCATION_MARK.search(core):
        return "obfuscated"
    if "://" in low:
        scheme = low.split("://", 1)[0]
        return "unsupported_scheme" if _SCHEME.fullmatch(scheme + ":") else "malformed"
    if low.startswith(("+", "tel:")):
        return None  # phone numbers are found on the whole line
    if low.startswith("mailto:"):
        query = core.find("?")
        return _extract_one(DestinationKind.EMAIL, raw[7 : query if query != -1 else len(core)])
    if "," in core or ";" in core:
        return _classify_list(core, raw)
    return _classify_single(core, raw)


def _quoted_lines(lines: list[str]) -> list[bool]:
    """Lines that are third-party content: '>' quotes and everything after a reply header."""
    quoted = [line.lstrip().startswith(">") for line in lines]
    for index, line in enumerate(lines):
        start: int | None = None
        if _QUOTE_SEPARATOR.fullmatch(line):
            start = index
        elif _WROTE.search(line):
            if _ON.match(line):
                start = index
            elif index > 0 and _ON.match(lines[index - 1]):
                start = index - 1
        if start is not None:
            for later in range(start, len(lines)):
                quoted[later] = True
            break
    return quoted


def extract_destinations(text: str, *, max_chars: int = DEFAULT_MAX_TEXT_CHARS) -> Extraction:
    """The destinations a principal wrote explicitly in ``text``, and what was declined.

    Raises InvalidRequest(too_large) if ``text`` is longer than ``max_chars``.
    """
    if not isinstance(text, str):
        raise InvalidRequest("request text must be a string", reason="bad_request_text")
    if len(text) > max_chars:
        raise InvalidRequest(
            f"request text is too long (max {max_chars} characters)", reason="too_large"
        )
    raw_lines = _LINE_BREAK.split(text)
    lines = [line.translate(_FOLD_TABLE) for line in raw_lines]
    quoted = _quoted_lines(lines)
    found: list[tuple[int, int, Destination]] = []
    rejected: list[tuple[int, int, RejectedCandidate]] = []

    for number, (raw, line) in enumerate(zip(raw_lines, lines, strict=True)):
        # Third-party text, and lines whose display order can be rewritten by bidi
        # controls, yield rejections only.
        refusal = "quoted" if quoted[number] else None
        if refusal is None and any(ch in _BIDI_CONTROLS for ch in raw):
            refusal = "confusable"

        def record(start: int, end: int, result: _Classified, *, line_no: int = number) -> None:
            if isinstance(result, tuple):
                found.extend((line_no, start, dest) for dest in result)
            elif result is not None:
                snippet = _snippet(raw_lines[line_no][start:end])
                rejected.append((line_no, start, RejectedCandidate(snippet, result)))

        hidden: list[tuple[int, int]] = []
        if refusal is None:
            for match in _OBFUSCATED.finditer(line):
                if _OBFUSCATION_MARK.search(match.group()):
                    hidden.append(match.span())
                    record(match.start(), match.end(), "obfuscated")

        for match in _TOKEN.finditer(line):
            if match.end() - match.start() > _MAX_TOKEN:
                result = "too_long" if _looks_like(match.group()) else None
                record(match.start(), match.end(), result)
                continue
            for span in _angle_split(line, *match.span()):
                start, end = _strip_span(line, *span)
                if start >= end or any(a < end and start < b for a, b in hidden):
                    continue
                core = line[start:end]
                if refusal is not None:
                    record(start, end, refusal if _looks_like(core) else None)
                else:
                    record(start, end, _classify(core, raw[start:end]))

        padded = " " + line
        for pattern, kind in ((_PHONE, DestinationKind.PHONE), (_IBAN, DestinationKind.ACCOUNT)):
            for match in pattern.finditer(padded):
                start, end = match.start() - 1, match.end() - 1
                candidate = line[start:end]
                if kind is DestinationKind.PHONE and sum(ch.isdigit() for ch in candidate) < 8:
                    continue  # "+1", "+49 30": too short to be a phone number at all
                if kind is DestinationKind.ACCOUNT and not _looks_like_iban(
                    candidate.replace(" ", "")
                ):
                    continue  # an order number, not an IBAN country
                if refusal is not None:
                    record(start, end, refusal)
                else:
                    record(start, end, _extract_one(kind, raw[start:end]))

    destinations: list[Destination] = []
    seen: set[Destination] = set()
    for _, _, dest in sorted(found, key=lambda item: (item[0], item[1])):
        if dest not in seen:
            seen.add(dest)
            destinations.append(dest)
    rejections: list[RejectedCandidate] = []
    seen_rejections: set[RejectedCandidate] = set()
    for _, _, candidate in sorted(rejected, key=lambda item: (item[0], item[1])):
        if candidate not in seen_rejections:
            seen_rejections.add(candidate)
            rejections.append(candidate)
    return Extraction(tuple(destinations), tuple(rejections))
