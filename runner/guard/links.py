"""Links that can carry data out: the ``injection_exfil_link`` rule of the injection stage.

Markdown links and images (inline and reference-style), autolinks, HTML elements a renderer fetches on its own,
and bare templated URLs, each judged by whether its URL can carry data to someone else (template placeholders,
encoded blobs, or any query on an image a renderer loads unasked). Kept apart from the other injection rules
(runner/guard/injection.py) because it reads the original text's markup and URLs, not the lower-cased words
the instruction, role-marker and hidden-text rules match.
"""

from __future__ import annotations

import re
import urllib.parse

# Absolute http(s) URLs and scheme-relative ones (``//evil.example/…``), which a page served over http(s) fetches.
_WEB_URL = r"(?:[Hh][Tt][Tt][Pp][Ss]?:)?//"
# ``](url)``; markdown allows spaces and one line break between the parenthesis and the URL; also ``] (url)``,
# which some renderers take for a link too.
_MARKDOWN_LINK = re.compile(
    r"\][ \t]{0,3}\([ \t]{0,8}(?:\r?\n[ \t]{0,8})?<?(" + _WEB_URL + r"[^\s()<>\[\]\"'`]{1,2048})"
)
# ``<https://…>``: a link as much as ``[text](https://…)`` is.
_AUTOLINK = re.compile(r"<([Hh][Tt][Tt][Pp][Ss]?://[^\s<>\"'`]{1,2048})>")
_LINK_TEXT_REACH = 500
"""How far back from ``](`` the ``[`` that opens the link text is looked for."""
_LINK_TEXT_NESTING = 16
# Reference-style links and images: ``![alt][ref]`` (or ``![ref][]``, ``![ref]``) anywhere, and the definition
# ``[ref]: https://…`` on a line of its own, maybe far below; the URL is judged as an image's when an image uses it.
_REFERENCE_DEFINITION = re.compile(
    r"^[ \t]{0,3}\[([^\]\n]{1,200})\]:[ \t]{0,8}<?(" + _WEB_URL + r"[^\s<>\"'`]{1,2048})", re.MULTILINE
)
_IMAGE_REFERENCE = re.compile(r"!\[([^\]\n]{0,500})\](?:\[([^\]\n]{0,200})\])?")
# HTML elements a renderer fetches on its own (an image, an SVG image, a picture's source, a poster, a frame…),
# each attribute that names what it fetches (``src``, ``srcset`` with several candidates, ``href``…) and every URL in
# one; a tag is read up to its '>' once, so a text of unclosed tags stays linear.
_FETCHING_TAG = re.compile(
    r"<(?:img|image|source|video|audio|input|iframe|frame|embed|object|script|link|track|body|table|td|th)\b[^>]{0,2000}",
    re.IGNORECASE,
)
_FETCHING_ATTRIBUTE = re.compile(
    r"\b(?:src|srcset|href|xlink:href|poster|data|background|lowsrc|dynsrc)\s{0,8}=\s{0,8}"
    r"(?:\"([^\"]{0,4096})\"|'([^']{0,4096})'|([^\s\"'<>]{1,2048}))",
    re.IGNORECASE,
)
_FETCHED_URL = re.compile(_WEB_URL + r"[^\s\"'<>,]{1,2048}")
# An http(s) URL with a template placeholder in it ("…?q={conversation}"); URLs without one fail inside ``re``.
_URL_HEAD = r"://(?:(?<=[Hh][Tt][Tt][Pp]://)|(?<=[Hh][Tt][Tt][Pp][Ss]://))"
_TEMPLATED_URL = re.compile(_URL_HEAD + r"[^\s\"'<>()\[\]`{]{0,2048}\{[^\s\"'<>()\[\]`]{0,2048}")
_ENCODED_TEMPLATE_URL = re.compile(_URL_HEAD + r"[^\s\"'<>()\[\]`]{0,2048}?%7[bB][^\s\"'<>()\[\]`]{0,2048}")
_PLACEHOLDER = re.compile(r"\{\{?[^{}\s]{1,64}\}\}?|%7[bB][^%\s]{1,64}%7[dD]|\$\{[^}\s]{1,64}\}|\$\([^)\s]{1,64}\)")
_QUERY_PLACEHOLDER = re.compile(r"=(?:\{|%7[bB]|\$\{|\$\()")
_IMAGE_PATH = re.compile(r"(?i)\.(?:png|jpe?g|gif|webp|svg|bmp|ico)\b|/(?:img|image|images|pixel|beacon|track)\b")
_ENCODED = re.compile(r"[A-Za-z0-9+/=_\-]+|(?:%[0-9A-Fa-f]{2}[^%]{0,3}){8,}")


def _carries_data(url: str, image: bool) -> bool:
    """Whether a URL can carry data out: template placeholders, encoded blobs, or (for images) any query."""
    if len(url) < 56 and not any(ch in url for ch in "?#{%$"):
        return False  # the common case, decided without parsing
    if image and "?" in url.split("#", 1)[0]:
        return True
    if _PLACEHOLDER.search(url):
        return True
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return True  # a URL Python cannot even split is not a plain link
    if image and parts.query:
        return True
    values = [v for _, v in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)]
    if parts.fragment:
        values.append(parts.fragment)
    return any(_encoded(piece, 48) for piece in parts.path.split("/")) or any(_encoded(v, 32) for v in values)


def _encoded(piece: str, min_length: int) -> bool:
    """A URL piece that looks like encoded data: long base64 with mixed characters, dense %-escapes, or huge."""
    if len(piece) >= 200:
        return True
    if len(piece) < min_length or _ENCODED.fullmatch(piece) is None:
        return False
    if "%" in piece:
        return True
    return any(c.isdigit() for c in piece) and any(c.isupper() for c in piece) and any(c.islower() for c in piece)


def exfil_links(text: str, lower: str) -> int:
    """Markdown links and images, HTML images and templated URLs that could carry data to someone else."""
    count = 0
    seen: set[int] = set()
    if "](" in text or "] (" in text:
        for m in _MARKDOWN_LINK.finditer(text):
            opened = _link_text_start(text, m.start())
            if opened < 0:
                continue
            seen.add(m.start(1))
            if _carries_data(m.group(1), image=opened > 0 and text[opened - 1] == "!"):
                count += 1
    if "]:" in text:
        count += _reference_links(text, seen)
    if "<" in text:
        for m in _AUTOLINK.finditer(text):
            if m.start(1) not in seen:  # not the <url> form of a markdown link's destination
                seen.add(m.start(1))
                count += _carries_data(m.group(1), image=False)
        for tag in _FETCHING_TAG.finditer(text):
            for attribute in _FETCHING_ATTRIBUTE.finditer(text, tag.start(), tag.end()):
                group = next(g for g in (1, 2, 3) if attribute.group(g) is not None)
                for url in _FETCHED_URL.finditer(text, attribute.start(group), attribute.end(group)):
                    seen.add(url.start())
                    if _carries_data(url.group(), image=True):
                        count += 1
    for trigger, pattern in (("{", _TEMPLATED_URL), ("%7b", _ENCODED_TEMPLATE_URL)):
        if trigger not in lower:
            continue
        for m in pattern.finditer(text):
            start = m.start() - (5 if text[m.start() - 1] in "sS" else 4)
            if start in seen or not _PLACEHOLDER.search(m.group()):
                continue
            seen.add(start)
            if _QUERY_PLACEHOLDER.search(m.group()) or _IMAGE_PATH.search(m.group()):
                count += 1
    return count


def _link_text_start(text: str, close: int) -> int:
    """Where the ``[`` is that the ``]`` at ``close`` closes, or -1: brackets nest (``![a [b] c](…)``) and link text
    may run over lines, though not over a blank one. Found with C-speed searches, at most a few per link."""
    floor = max(0, close - _LINK_TEXT_REACH)
    blank = text.rfind("\n\n", floor, close)
    floor = blank + 2 if blank >= 0 else floor
    pos, open_brackets_needed = close, 1
    for _ in range(_LINK_TEXT_NESTING):
        opened = text.rfind("[", floor, pos)
        if opened < 0:
            return -1
        open_brackets_needed += text.count("]", opened + 1, pos) - 1
        if open_brackets_needed <= 0:
            return opened
        pos = opened
    return -1


def _reference_label(label: str) -> str:
    """A reference label as markdown matches it: case and runs of white space do not matter."""
    return " ".join(label.lower().split())


def _reference_links(text: str, seen: set[int]) -> int:
    """Reference definitions whose URL could carry data out; the URL start of each is added to ``seen``."""
    count = 0
    images: set[str] | None = None
    for m in _REFERENCE_DEFINITION.finditer(text):
        if images is None:
            images = {
                _reference_label(image.group(2) or image.group(1)) for image in _IMAGE_REFERENCE.finditer(text)
            }
        seen.add(m.start(2))
        if _carries_data(m.group(2), image=_reference_label(m.group(1)) in images):
            count += 1
    return count
