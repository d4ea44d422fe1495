"""Where an outbound call goes: the request's ``transport`` object and the configured trunks
turned into one :class:`DialPlan`, or a clear :class:`InvalidCallRequest`. Pure functions.

A destination is E.164 (``+15551234567``), a ``tel:`` URI or a ``sip:``/``sips:`` URI. The
trunk is a configured one by name, or inline as OpenAI's GPT-Live ``LiveSipTrunk`` has it:
``{"provider_url", "auth": {"type": "digest", "username", "password"}, "caller_number"}``.
The call is always sent to the trunk (the carrier or PBX routes it on), never straight to a
host the destination names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from callgate.calls.control import InvalidCallRequest
from callgate.calls.registration import TrunkTarget
from callgate.config import Settings, Trunk

_E164 = re.compile(r"\+[1-9][0-9]{6,14}")
_SIP_DEST = re.compile(r"sips?:[A-Za-z0-9\-_.!~*'()%&=+$,;?/:]+@[A-Za-z0-9\-.\[\]:]+"
                       r"(?::[0-9]{1,5})?(?:;[A-Za-z0-9\-_.=]+)*")
_HEADER_NAME = re.compile(r"[A-Za-z0-9\-_.!%*+`'~]+")
# Headers a request may not set: they make the dialog or its routing, which are ours.
_RESERVED = frozenset({"via", "from", "to", "call-id", "cseq", "contact", "route",
                       "record-route", "max-forwards", "content-length", "content-type",
                       "authorization", "proxy-authorization"})


@dataclass(frozen=True)
class DialPlan:
    destination: str            # as the client gave it
    request_uri: str
    to: str
    caller: str                 # From URI
    target: TrunkTarget
    trunk: str | None           # the configured trunk's name (None: inline)
    username: str | None = None
    password: str | None = None
    realm: str | None = None
    headers: list[tuple[str, str]] = field(default_factory=list)
    ring_timeout: float = 30.0
    early_media: bool = False
    max_outbound: int | None = None


def _no_crlf(value: Any, param: str) -> None:
    if isinstance(value, str) and any(ch in value for ch in "\r\n\0"):
        raise InvalidCallRequest(f"'{param}' must not contain CR, LF or NUL.", param=param)
    if isinstance(value, dict):
        for key, item in value.items():
            _no_crlf(key, param)
            _no_crlf(item, f"{param}.{key}")


def plan_call(transport: dict[str, Any], settings: Settings) -> DialPlan:
    """The plan for ``transport`` (the request's ``transport`` object, already shaped)."""
    _no_crlf(transport, "transport")
    destination = str(transport["destination"]).strip()
    trunk_field = transport.get("trunk")
    if isinstance(trunk_field, str):
        trunk = settings.trunks.get(trunk_field)
        if trunk is None:
            known = ", ".join(sorted(settings.trunks)) or "none configured"
            raise InvalidCallRequest(f"Unknown trunk '{trunk_field}' (known: {known}).",
                                     param="transport.trunk", code="trunk_not_found")
        name: str | None = trunk_field
    elif isinstance(trunk_field, dict):
        trunk, name = _inline_trunk(trunk_field), None
    else:
        if len(settings.trunks) != 1:
            raise InvalidCallRequest("'transport.trunk' is required: name a configured trunk "
                                     "or give one inline with provider_url.",
                                     param="transport.trunk")
        name, trunk = next(iter(settings.trunks.items()))
    target = TrunkTarget.of(trunk)
    domain = trunk.domain or target.host
    if _E164.fullmatch(destination) or (destination.startswith("tel:")
                                        and _E164.fullmatch(destination[4:].split(";")[0])):
        number = destination.removeprefix("tel:").split(";")[0]
        request_uri = f"sip:{number}@{domain};user=phone"
    elif _SIP_DEST.fullmatch(destination):
        request_uri = destination
    else:
        raise InvalidCallRequest(
            f"Invalid destination '{destination}': expected an E.164 number such as "
            "+14155550123, a tel: URI or a sip: URI such as sip:bob@pbx.example.com.",
            param="transport.destination", code="invalid_destination")
    caller = trunk.caller_number or trunk.username or settings.project_id
    headers = dict(trunk.headers)
    for key, value in (transport.get("headers") or {}).items():
        if not _HEADER_NAME.fullmatch(key) or key.lower() in _RESERVED:
            raise InvalidCallRequest(f"Header '{key}' may not be set.",
                                     param=f"transport.headers.{key}")
        headers[key] = str(value)
    return DialPlan(destination=destination, request_uri=request_uri, to=request_uri,
                    caller=f"sip:{caller}@{domain}", target=target, trunk=name,
                    username=trunk.username, password=trunk.password, realm=trunk.realm,
                    headers=list(headers.items()),
                    ring_timeout=float(transport.get("ring_timeout") or 30.0),
                    early_media=bool(transport.get("early_media")),
                    max_outbound=trunk.max_outbound)


def _inline_trunk(spec: dict[str, Any]) -> Trunk:
    auth = spec.get("auth") or {}
    try:
        return Trunk.model_validate({"address": spec["provider_url"],
                                     "username": auth.get("username"),
                                     "password": auth.get("password"),
                                     "caller_number": spec.get("caller_number")})
    except ValidationError as exc:
        detail = exc.errors()[0]["msg"] if exc.errors() else str(exc)
        raise InvalidCallRequest(f"Invalid inline trunk: {detail}.",
                                 param="transport.trunk.provider_url") from None
