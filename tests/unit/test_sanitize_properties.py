"""Properties of redaction mapped back from the folded copy: a secret disguised with invisible characters,
compatibility forms (fullwidth, mathematical letters) and escapes (``%41``, ``\\u0041``) goes whole, and the text
around it is left as stripping leaves it."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runner.guard.findings import FLAGGED, FindingLog
from runner.guard.sanitize import SanitizeConfig, Sanitizer
from runner.guard.strip import strip

OWN = "Zq9#own-Secret!42"
S = Sanitizer(SanitizeConfig(secrets=(OWN,)))
TOKEN = "ghp_A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8"
EMAIL = "jane.doe@example.com"
KIND = {TOKEN: "github_token", OWN: "secret", EMAIL: "email"}
INVISIBLE = [
    "\u200b", "\u00ad", "\u2060", "\ufeff", "\u200c", "\u200d", "\u034f", "\U000e0041", "\ufe0f", "\u180e",
    "\u202e", "\u2066", "\x1b[31m", "\x07", "\U0001d173", "\u3164",
]  # fmt: skip
FULLWIDTH = {chr(c): chr(c + 0xFEE0) for c in range(0x21, 0x7F)}
BOLD = {chr(c): chr(0x1D400 + c - 0x41) for c in range(0x41, 0x5B)}
# Neighbours that fold to several characters (ﬁ, ①, ㌀, ﷺ), change length when lower-cased (İ), combine (ẛ̣) or
# keep their joiners (emoji sequences, Persian).
NEIGHBOURS = st.lists(
    st.sampled_from(
        [*"ab c.,-_\n%", "\u00e9", "\ufb01", "\u2460", "\u3300", "\u0130", "\uff21", "\u00bd", "\u2474", "\ufdfa",
         "\u65e5", "\U0001d400", "\u1e9b\u0323", "\U0001f600\u200d\U0001f600", "\u0644\u200c\u0645"]
    ),
    max_size=12,
).map("".join)  # fmt: skip
PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))


@st.composite
def disguised(draw: st.DrawFn, secret: str) -> str:
    out = []
    for ch in secret:
        form = draw(st.integers(0, 7))
        if form == 2:
            out.append(draw(st.sampled_from(["%{:02X}", "\\u{:04x}", "\\x{:02x}"])).format(ord(ch)))
            continue
        out.append(FULLWIDTH.get(ch, ch) if form == 0 else BOLD.get(ch, ch) if form == 1 else ch)
        if draw(st.integers(0, 4)) == 0:
            out.append(draw(st.sampled_from(INVISIBLE)))
    return "".join(out)


def stripped(text: str) -> str:
    return strip(text, "", FindingLog(), FLAGGED)


def test_a_joiner_between_fullwidth_letters_does_not_split_a_secret() -> None:
    # Stripping keeps a ZWJ between two non-ASCII characters; these two read as ASCII.
    text = "key " + TOKEN[:5] + "\uff11\u200d\uff42" + TOKEN[7:] + " end"
    assert S.text(text, "x", FindingLog()) == "key [REDACTED:github_token] end"


@PROPERTY
@given(st.data())
def test_a_disguised_secret_goes_whole_and_its_neighbours_stay(data: st.DataObject) -> None:
    secret = data.draw(st.sampled_from(sorted(KIND)))
    before, after = data.draw(NEIGHBOURS), data.draw(NEIGHBOURS)
    text = f"{before} {data.draw(disguised(secret))} {after}"
    assert S.text(text, "x", FindingLog()) == f"{stripped(before)} [REDACTED:{KIND[secret]}] {stripped(after)}"


@PROPERTY
@given(NEIGHBOURS)
def test_text_without_secrets_only_loses_what_stripping_removes(text: str) -> None:
    assert S.text(text, "x", FindingLog()) == stripped(text)


def test_a_token_spelled_with_json_escapes_is_redacted_escapes_and_all() -> None:
    # A tool that returns JSON as text: whoever parses it reads \u0041 as A and \/ as /.
    text = '{"t": "ghp_\\u0041\\u00311b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8", "next": "ok"}'
    assert S.text(text, "x", FindingLog()) == '{"t": "[REDACTED:github_token]", "next": "ok"}'


def test_own_secrets_go_however_spelled_with_sanitizing_off() -> None:
    off = Sanitizer(SanitizeConfig(enabled=False, secrets=(OWN,)))
    for spelled in (
        "\uff3aq9#own-Secret!42",
        "%5Aq9#own-Secret!42",
        "\\u005aq9#own-Secret!42",
        "Zq9#own-Secret!4\uff12",
    ):
        assert off.text(f"a {spelled} b \x1b[1m", "x", FindingLog()) == "a [REDACTED:secret] b ", spelled
    assert off.text("plain \x1b[1m text", "x", FindingLog()) == "plain \x1b[1m text"


def test_own_secrets_in_base64_wrapped_across_lines_are_redacted() -> None:
    import base64
    import textwrap

    secret = "Zq9-own-Secret-42-abcdefghij"
    encoded = base64.b64encode(f"{'x' * 70}user:{secret}{'y' * 40}".encode()).decode()
    forms = [encoded[k : k + 12] for k in range(100, 125)]  # base64 made of the secret's bits alone
    for config in (SanitizeConfig(secrets=(secret,)), SanitizeConfig(enabled=False, secrets=(secret,))):
        sanitizer = Sanitizer(config)
        for wrapped in ("\n".join(textwrap.wrap(encoded, 76)), "\r\n  ".join(textwrap.wrap(encoded, 64))):
            out = sanitizer.text(f"config: |\n  {wrapped}\nend", "x", FindingLog())
            unwrapped = "".join(out.split())
            assert "[REDACTED:secret]" in out and not any(form in unwrapped for form in forms), out
            lines = out.split("\n")
            assert lines[0] == "config: |" and lines[-1] == "end"  # the text around the secret stays
