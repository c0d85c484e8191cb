"""Regular expressions for the RFC 3261 §25.1 grammar, applied after line unfolding.

Each pattern is named after its ABNF rule. Header values are matched with
``fullmatch`` so that anything the grammar does not allow is refused.

Linear by construction. Python's ``re`` backtracks, so a pattern that can split
the same text in two ways costs time exponential or polynomial in its input.
Every pattern here is written so that there is never a second way to try:

* every repetition is possessive (``*+``, ``++``, ``?+``): a run, once matched,
  is never given back. That never loses a match, because what may follow a run
  can never start with a character the run takes (each run below is followed by
  a literal or a class disjoint from its own);
* the branches of an alternation start with different characters (or, for the
  few bounded ones, are atomic), so at most one branch gets past its first
  character.

The engine then looks at each character a bounded number of times: matching is
linear in the input. (Where optional white space may come before one of several
delimiters, as SWS "=" and SWS ";" in a parameter list, a failed try gives its
white space back whole and the next delimiter's SWS reads it again: at most once
per delimiter, a constant.) Patterns that are *searched* for rather than matched
at a position (message.py's unfolding) must also start only where their first
run starts, or every position inside a long run would scan the rest of it again.

The one place where the grammar itself is ambiguous to a left-to-right reader,
gen-value (token, host or, in Via's ``received``, a bare IPv6 address, which
shares its characters with token up to the first colon), is matched as one run
of their union and the colon case is checked afterwards by
:func:`sipcore.sip.uri.is_ipv6_text` (headers.check_param_values).
"""

from __future__ import annotations

import re
from typing import Final

# §25.1 basic rules. SWS: optional white space; after unfolding (§7.3.1) LWS is SP/HTAB.
SWS: Final = r"[ \t]*+"
LWS: Final = r"[ \t]++"
# token = 1*(alphanum / "-" / "." / "!" / "%" / "*" / "_" / "+" / "`" / "'" / "~")
TOKEN_CHARS: Final = r"A-Za-z0-9\-.!%*_+`'~"  # noqa: S105 - a grammar rule, not a secret
TOKEN: Final = rf"[{TOKEN_CHARS}]++"
# word additionally allows ( ) < > : \ " / [ ] ? { }
WORD: Final = r"[A-Za-z0-9\-.!%*_+`'~()<>:\\\"/\[\]?{}]++"
# quoted-string = SWS DQUOTE *(qdtext / quoted-pair) DQUOTE
# qdtext = LWS / %x21 / %x23-5B / %x5D-7E / UTF8-NONASCII; quoted-pair = "\" (%x00-09 / %x0B-0C / %x0E-7F)
# Non-ASCII includes the surrogate escapes standing for undecodable bytes. The two
# branches start with different characters (qdtext never holds "\").
QUOTED_STRING: Final = r'"(?:[ \t\x21\x23-\x5b\x5d-\x7e\x80-\U0010ffff]++|\\[\x00-\x09\x0b\x0c\x0e-\x7f])*+"'

# IPv6reference = "[" IPv6address "]" (RFC 3261 §25.1, RFC 5118): by characters, with
# at least one colon; the address itself is checked by uri.is_ipv6_text afterwards.
IPV6_REFERENCE: Final = r"\[[0-9A-Fa-f.]*+:[0-9A-Fa-f:.]*+\]"
# IPv6address (RFC 3986 §3.2.2, the text forms of RFC 4291 §2.2), checked after a
# match by characters (sipcore.sip.uri.is_ipv6_text): one branch per count of
# groups before "::". Its backtracking is bounded by the address's 46 characters,
# and it is only ever matched against text of at most that length. RFC 5118 §4.10:
# RFC 3261's ABNF allows an extra colon before an embedded IPv4 address
# ("2001:db8:::192.0.2.1"), so "::" may be written ":::".
_H16: Final = r"[0-9A-Fa-f]{1,4}+"
_DEC_OCTET: Final = r"(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"
_LS32: Final = rf"(?:{_H16}:{_H16}|{_DEC_OCTET}(?:\.{_DEC_OCTET}){{3}})"
_DOUBLE_COLON: Final = r":::?"
IPV6_ADDRESS: Final = (
    rf"(?:(?:{_H16}:){{6}}{_LS32}"
    rf"|{_DOUBLE_COLON}(?:{_H16}:){{5}}{_LS32}"
    rf"|(?:{_H16})?{_DOUBLE_COLON}(?:{_H16}:){{4}}{_LS32}"
    rf"|(?:(?:{_H16}:){{0,1}}{_H16})?{_DOUBLE_COLON}(?:{_H16}:){{3}}{_LS32}"
    rf"|(?:(?:{_H16}:){{0,2}}{_H16})?{_DOUBLE_COLON}(?:{_H16}:){{2}}{_LS32}"
    rf"|(?:(?:{_H16}:){{0,3}}{_H16})?{_DOUBLE_COLON}{_H16}:{_LS32}"
    rf"|(?:(?:{_H16}:){{0,4}}{_H16})?{_DOUBLE_COLON}{_LS32}"
    rf"|(?:(?:{_H16}:){{0,5}}{_H16})?{_DOUBLE_COLON}{_H16}"
    rf"|(?:(?:{_H16}:){{0,6}}{_H16})?{_DOUBLE_COLON})"
)
# hostname = *( domainlabel "." ) toplabel [ "." ]; labels of alphanum and inner "-".
# Checked by characters only: the label rules cost a backtracking regex on every
# Via, and a bad name fails at DNS.
HOSTNAME: Final = r"[A-Za-z0-9][A-Za-z0-9\-.]*+"
HOST: Final = rf"(?:{IPV6_REFERENCE}|{HOSTNAME})"
PORT: Final = r"[0-9]{1,5}+"

# gen-value = token / host / quoted-string (§25.1); Via's received may be a bare
# IPv6address (§20.42). token, hostname, IPv4address and IPv6address are read as
# one run of their characters; a run holding a colon must be an IPv6 address
# (checked after the match, see the module docstring).
GEN_VALUE: Final = rf"(?:[{TOKEN_CHARS}:]++|{IPV6_REFERENCE}|{QUOTED_STRING})"
GENERIC_PARAM: Final = rf"{TOKEN}(?:{SWS}={SWS}{GEN_VALUE})?+"
PARAMS: Final = rf"(?:{SWS};{SWS}{GENERIC_PARAM})*+"

# via-parm = sent-protocol LWS sent-by *( SEMI via-params ); SLASH = SWS "/" SWS
VIA_PARM: Final = (
    rf"({TOKEN}){SWS}/{SWS}({TOKEN}){SWS}/{SWS}({TOKEN}){LWS}"
    rf"({HOST})(?:{SWS}:{SWS}({PORT}))?+({PARAMS})"
)

# addr-spec outside <> cannot hold ",", ";" or "?" (§20.10): they would be read as
# header parameters or list separators. Inside <> any URI characters go.
URI_SCHEME: Final = r"[A-Za-z][A-Za-z0-9+\-.]*+:"
ADDR_SPEC_BARE: Final = rf"{URI_SCHEME}[^\s<>\"\x00-\x1f\x7f,;?]++"
ADDR_SPEC_BRACKETED: Final = rf"{URI_SCHEME}[^\s<>\"\x00-\x1f\x7f]++"
# display-name = *(token LWS) / quoted-string. RFC 4475 §3.1.1.6 (lwsdisp): accept
# a token display name even without LWS before "<".
DISPLAY_NAME: Final = rf"(?:{TOKEN}(?:{LWS}{TOKEN})*+|{QUOTED_STRING})"
# (name-addr / addr-spec) *( SEMI param ): groups display, bracketed uri, bare uri, params.
# The branches share letters (a display name and a scheme), but the first stops at
# the scheme's colon, which no display-name token holds; the group is atomic. The
# white space before the parameters is PARAMS' own (its group starts with it).
NAME_ADDR_PARAMS: Final = (
    rf"(?>({DISPLAY_NAME})?+{SWS}<({ADDR_SPEC_BRACKETED})>|({ADDR_SPEC_BARE}))({PARAMS})"
)


TOKEN_RE: Final = re.compile(TOKEN)
WORD_RE: Final = re.compile(WORD)
QUOTED_STRING_RE: Final = re.compile(QUOTED_STRING)
GEN_VALUE_RE: Final = re.compile(GEN_VALUE)
PARAMS_RE: Final = re.compile(PARAMS)
# One parameter at a time, for splitting a validated parameter list.
PARAM_ITEM_RE: Final = re.compile(rf"{SWS};{SWS}({TOKEN})(?:{SWS}={SWS}({GEN_VALUE}))?+")
VIA_PARM_RE: Final = re.compile(VIA_PARM)
COMMA_RE: Final = re.compile(rf"{SWS},{SWS}")
NAME_ADDR_PARAMS_RE: Final = re.compile(NAME_ADDR_PARAMS)
# Call-ID = word [ "@" word ]
CALL_ID_RE: Final = re.compile(rf"{WORD}(?:@{WORD})?+")
CSEQ_RE: Final = re.compile(rf"([0-9]++){LWS}({TOKEN})")
HOST_RE: Final = re.compile(HOST)
# media-type = m-type SLASH m-subtype *(SEMI m-parameter)
MEDIA_TYPE_RE: Final = re.compile(rf"({TOKEN}){SWS}/{SWS}({TOKEN})({PARAMS})")
# SIP-date = rfc1123-date = wkday "," SP date1 SP time SP "GMT" (§25.1)
SIP_DATE_RE: Final = re.compile(
    r"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), [0-9]{2} "
    r"(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) [0-9]{4} "
    r"[0-9]{2}:[0-9]{2}:[0-9]{2} GMT"
)
# Retry-After = delta-seconds [ comment ] *( SEMI retry-param ); a comment of ctext
# and quoted-pairs (§25.1), the branches starting with different characters.
RETRY_AFTER_RE: Final = re.compile(
    rf"([0-9]++)(?:{SWS}\((?:[^()\\\x00-\x08\x0a-\x1f]++|\\[^\r\n])*+\))?+({PARAMS})"
)
# warning-value = warn-code SP warn-agent SP warn-text; warn-code = 3DIGIT
WARNING_VALUE_RE: Final = re.compile(rf"[0-9]{{3}} [^ ,\x00-\x1f\x7f]++ {QUOTED_STRING}")

# --- fast paths -------------------------------------------------------------
# Plain, common spellings matched by simpler patterns first. Each accepts a strict
# subset of its grammar rule above and has the same groups, so a miss only means
# "take the general pattern"; it never changes what is accepted. Linear the same way.
_T: Final = TOKEN
# At most FAST_MAX_PARAMS parameters (and URI parameters in FAST_NAME_ADDR_RE): more
# take the general patterns, whose checks count them against the parser's limits
# (sipcore.sip.limits), so the fast paths need no count of their own.
FAST_MAX_PARAMS: Final = 16
_SIMPLE_PARAMS: Final = rf"(?:;{_T}(?:={_T})?+){{0,{FAST_MAX_PARAMS}}}+"
# 0-65535, atomic: each branch is the longest of its kind and a digit never follows.
PORT_NUMBER: Final = r"(?>6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[0-9]{1,4}+)"
FAST_VIA_PARM_RE: Final = re.compile(
    rf"(SIP)/(2\.0)/([A-Za-z]++) ([A-Za-z0-9][A-Za-z0-9\-.]*+)(?::({PORT_NUMBER}))?+({_SIMPLE_PARAMS})"
)
# Up to 9 digits is always below 2**32.
FAST_CSEQ_RE: Final = re.compile(rf"([0-9]{{1,9}}+) ({_T})")
FAST_MEDIA_TYPE_RE: Final = re.compile(rf"({_T})/({_T})({_SIMPLE_PARAMS})")
# Positive ASCII classes: they match faster than negated ones. [!#-:=?-~] is every
# visible ASCII character but " ; < >; the URI's ";"s are counted out by the group after.
# A bare addr-spec ([!#-+\--:=@-~]: visible ASCII but " , ; < > ?, as ADDR_SPEC_BARE)
# is the second branch, as in NAME_ADDR_PARAMS; the first fails on a bare one at the
# scheme's colon, so the two together read each character at most twice.


def _fast_name_addr(params: str) -> str:
    return (
        rf'(?>(?:({_T}(?: {_T})*+|"[^"\\\x00-\x1f\x7f]*+") ?)?+'
        rf"<({URI_SCHEME}[!#-:=?-~]++(?:;[!#-:=?-~]*+){{0,{FAST_MAX_PARAMS}}}+)>"
        rf"|({URI_SCHEME}[!#-+\--:=@-~]++))({params})"
    )


FAST_NAME_ADDR_RE: Final = re.compile(_fast_name_addr(_SIMPLE_PARAMS))
# Contact's: without an expires parameter, whose value the check reads (RFC 3261
# §20.10, delta-seconds). The look-ahead reads at most eight characters per ";".
_NOT_EXPIRES: Final = rf"(?![Ee][Xx][Pp][Ii][Rr][Ee][Ss](?![{TOKEN_CHARS}]))"
FAST_CONTACT_RE: Final = re.compile(
    _fast_name_addr(rf"(?:;{_NOT_EXPIRES}{_T}(?:={_T})?+){{0,{FAST_MAX_PARAMS}}}+")
)
