"""Dialogs (RFC 3261 §12): creation on both sides, route sets, in-dialog requests, CSeq checks."""

from __future__ import annotations

import pytest

from callgate.sip.dialog import Dialog, DialogSet, DialogState
from callgate.sip.message import Request, Response, SipUri, make_response, parse_message


def invite(record_route: tuple[str, ...] = (), uri: str = "sip:proj@192.0.2.10",
           contact: str | None = "<sip:alice@203.0.113.5:5062;transport=tcp>",
           cseq: int = 10) -> Request:
    lines = [
        f"INVITE {uri} SIP/2.0",
        "Via: SIP/2.0/UDP 203.0.113.5:5062;branch=z9hG4bKd1",
        "Max-Forwards: 70",
        'From: "Alice" <sip:alice@example.org>;tag=alice1',
        "To: <sip:proj@192.0.2.10>",
        "Call-ID: dlg-1",
        f"CSeq: {cseq} INVITE",
        *([f"Contact: {contact}"] if contact else []),
        *[f"Record-Route: {rr}" for rr in record_route],
        "Content-Length: 0",
        "",
        "",
    ]
    message = parse_message("\r\n".join(lines).encode())
    assert isinstance(message, Request)
    return message


def answer(request: Request, status: int = 200, *, contact: str = "<sip:proj@192.0.2.10:5060>",
           record_route: tuple[str, ...] = ()) -> Response:
    headers = [("Contact", contact)] + [("Record-Route", rr) for rr in record_route]
    return make_response(request, status, to_tag="uas1", headers=headers)


def in_dialog(method: str, cseq: int, *, contact: str | None = None) -> Request:
    extra = f"Contact: {contact}\r\n" if contact else ""
    raw = (f"{method} sip:proj@192.0.2.10 SIP/2.0\r\n"
           "Via: SIP/2.0/UDP 203.0.113.5:5062;branch=z9hG4bKd9\r\n"
           "From: <sip:alice@example.org>;tag=alice1\r\nTo: <sip:proj@192.0.2.10>;tag=uas1\r\n"
           f"Call-ID: dlg-1\r\nCSeq: {cseq} {method}\r\n{extra}Content-Length: 0\r\n\r\n")
    message = parse_message(raw.encode())
    assert isinstance(message, Request)
    return message


RR = ("<sip:p1.example.com;lr>", "<sip:p2.example.com;lr>")


def test_uas_dialog_from_invite() -> None:
    req = invite(RR)
    dialog = Dialog.from_uas(req, answer(req), transport="udp", local_contact="<sip:proj@h>")
    assert dialog.id.call_id == "dlg-1"
    assert (dialog.local_tag, dialog.remote_tag) == ("uas1", "alice1")
    assert dialog.remote_seq == 10 and dialog.state is DialogState.CONFIRMED
    assert str(dialog.remote_target) == "sip:alice@203.0.113.5:5062;transport=tcp"
    assert dialog.route_set == list(RR)  # UAS keeps the order (§12.1.1)
    assert not dialog.secure


def test_uas_bye_uses_route_set_and_increments_cseq() -> None:
    req = invite(RR)
    dialog = Dialog.from_uas(req, answer(req), transport="udp")
    bye = dialog.create_request("BYE")
    assert bye.method == "BYE"
    assert str(bye.uri) == "sip:alice@203.0.113.5:5062;transport=tcp"
    assert bye.headers.get_all("Route") == list(RR)
    assert bye.cseq.seq == 1 and bye.max_forwards == 70
    assert bye.from_.tag == "uas1" and bye.to.tag == "alice1"
    assert bye.from_.uri == req.to.uri and bye.to.display == "Alice"
    assert bye.call_id == "dlg-1" and "Via" not in bye.headers
    assert "Contact" not in bye.headers
    assert dialog.create_request("INFO").cseq.seq == 2
    assert dialog.next_hop() == ("p1.example.com", None, "udp")


def test_uac_dialog_reverses_record_route() -> None:
    req = invite()
    ok = answer(req, record_route=RR)
    dialog = Dialog.from_uac(req, ok, transport="udp")
    assert dialog.route_set == list(reversed(RR))
    assert (dialog.local_tag, dialog.remote_tag) == ("alice1", "uas1")
    assert dialog.local_seq == 10 and dialog.remote_seq is None
    reinvite = dialog.create_request("INVITE", body=b"v=0\r\n", content_type="application/sdp")
    assert reinvite.cseq.seq == 11
    assert reinvite.content_type == "application/sdp" and reinvite.body == b"v=0\r\n"
    assert str(reinvite.uri) == "sip:proj@192.0.2.10:5060"
    ack = dialog.create_ack(11)
    assert str(ack.cseq) == "11 ACK" and ack.headers.get_all("Route") == list(reversed(RR))


def test_strict_route_moves_remote_target_to_the_end() -> None:
    strict = ("<sip:strict.example.com;maddr=10.0.0.1>", "<sip:p2.example.com;lr>")
    req = invite(strict)
    dialog = Dialog.from_uas(req, answer(req), transport="udp")
    bye = dialog.create_request("BYE")
    assert isinstance(bye.uri, SipUri) and bye.uri.host == "strict.example.com"
    assert bye.headers.get_all("Route") == [
        "<sip:p2.example.com;lr>", "<sip:alice@203.0.113.5:5062;transport=tcp>"]
    assert dialog.next_hop() == ("10.0.0.1", None, "udp")


def test_no_route_set_goes_to_the_remote_target() -> None:
    req = invite()
    dialog = Dialog.from_uas(req, answer(req), transport="udp")
    bye = dialog.create_request("BYE")
    assert "Route" not in bye.headers
    assert dialog.next_hop() == ("203.0.113.5", 5062, "tcp")


def test_refer_and_notify_carry_contact() -> None:
    req = invite()
    dialog = Dialog.from_uas(req, answer(req), transport="udp", local_contact="<sip:proj@h>")
    refer = dialog.create_request("REFER", headers=[("Refer-To", "<tel:+15550100>")])
    assert refer.headers.get("Contact") == "<sip:proj@h>"
    assert refer.headers.get("Refer-To") == "<tel:+15550100>"


def test_secure_flag_needs_tls_and_sips() -> None:
    req = invite(uri="sips:proj@192.0.2.10")
    assert Dialog.from_uas(req, answer(req), transport="tls").secure
    assert not Dialog.from_uas(req, answer(req), transport="tcp").secure
    dialog = Dialog.from_uas(req, answer(req), transport="tls")
    assert dialog.next_hop()[2] == "tls"


def test_lower_cseq_is_rejected_with_500() -> None:
    req = invite(cseq=10)
    dialog = Dialog.from_uas(req, answer(req), transport="udp")
    assert dialog.receive_request(in_dialog("INFO", 11)) is None
    assert dialog.remote_seq == 11
    assert dialog.receive_request(in_dialog("BYE", 9)) == 500
    assert dialog.remote_seq == 11
    assert dialog.receive_request(in_dialog("ACK", 10)) is None  # ACK reuses the INVITE CSeq


def test_target_refresh_updates_remote_target() -> None:
    req = invite()
    dialog = Dialog.from_uas(req, answer(req), transport="udp")
    dialog.receive_request(in_dialog("INVITE", 11, contact="<sip:alice@198.51.100.9>"))
    assert str(dialog.remote_target) == "sip:alice@198.51.100.9"
    dialog.receive_request(in_dialog("INFO", 12, contact="<sip:ignored@x>"))
    assert str(dialog.remote_target) == "sip:alice@198.51.100.9"


def test_early_dialog_confirms_with_2xx_route_set() -> None:
    req = invite()
    dialog = Dialog.from_uac(req, answer(req, 183, record_route=RR[:1]), transport="udp")
    assert dialog.state.value == "early"
    dialog.confirm(answer(req, 200, record_route=RR, contact="<sip:final@192.0.2.99>"))
    assert dialog.state.value == "confirmed"
    assert dialog.route_set == list(reversed(RR))
    assert str(dialog.remote_target) == "sip:final@192.0.2.99"


def test_terminated_dialog_refuses_requests() -> None:
    req = invite()
    dialog = Dialog.from_uas(req, answer(req), transport="udp")
    dialog.terminate()
    with pytest.raises(ValueError):
        dialog.create_request("BYE")


def test_dialog_needs_a_to_tag() -> None:
    req = invite()
    with pytest.raises(ValueError):
        Dialog.from_uas(req, make_response(req, 100), transport="udp")


def test_dialog_set_lookups() -> None:
    req = invite()
    ok = answer(req)
    dialogs = DialogSet()
    uas = Dialog.from_uas(req, ok, transport="udp")
    dialogs.add(uas)
    assert len(dialogs) == 1
    assert dialogs.for_request(in_dialog("BYE", 11)) is uas
    assert dialogs.get("dlg-1", "uas1", "alice1") is uas
    assert dialogs.get("dlg-1", "alice1", "uas1") is None
    bye = uas.create_request("BYE")
    assert dialogs.for_response(make_response(bye, 200)) is uas
    dialogs.remove(uas)
    assert len(dialogs) == 0 and dialogs.for_request(in_dialog("BYE", 11)) is None


def test_rfc2543_invite_without_contact_targets_from_uri() -> None:
    req = invite(contact=None)
    dialog = Dialog.from_uas(req, answer(req), transport="udp")
    assert str(dialog.remote_target) == "sip:alice@example.org"
