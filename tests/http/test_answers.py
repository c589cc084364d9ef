"""Default answers and custom templates: exact bytes, placeholders, file://, precedence."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from sozu.command.types import Cluster
from sozu.worker.core.http.answers import (
    BUILTIN_CODES,
    AnswerContext,
    AnswerSet,
    Template,
    TemplateError,
    builtin_text,
)

CTX = AnswerContext(request_id="01HRQ", cluster_id="c1", backend_id="b1", route="GET a /")


def split(data: bytes) -> tuple[list[bytes], bytes]:
    head, _, body = data.partition(b"\r\n\r\n")
    return head.split(b"\r\n"), body


def test_builtin_404_exact_head_and_length() -> None:
    answer = AnswerSet().render(404, CTX)
    lines, body = split(answer.data)
    assert lines == [
        b"HTTP/1.1 404 Not Found",
        b"Cache-Control: no-cache",
        b"Connection: close",
        b"Sozu-Id: 01HRQ",
        b"Content-Length: " + str(len(body)).encode(),
    ]
    assert b"<h1>404 Not Found</h1>" in body
    assert b"01HRQ" in body
    assert (answer.status, answer.close) == (404, True)


@pytest.mark.parametrize("code", BUILTIN_CODES)
def test_every_builtin_is_well_formed(code: int) -> None:
    answer = AnswerSet().render(code, CTX)
    lines, body = split(answer.data)
    assert lines[0].startswith(b"HTTP/1.1 %d " % code)
    assert b"Connection: close" in lines
    assert b"Sozu-Id: 01HRQ" in lines
    assert b"Content-Length: %d" % len(body) in lines
    assert (b"Cache-Control: no-cache" in lines) == (code not in (301, 302, 308))
    assert answer.status == code
    assert answer.close


@pytest.mark.parametrize(("code", "reason"), [(301, "Moved Permanently"), (302, "Found")])
def test_builtin_redirect_exact_bytes(code: int, reason: str) -> None:
    ctx = AnswerContext(request_id="R", redirect_location="https://example.com/a?b")
    assert (
        AnswerSet().render(code, ctx).data
        == (
            f"HTTP/1.1 {code} {reason}\r\n"
            "Location: https://example.com/a?b\r\n"
            "Connection: close\r\n"
            "Sozu-Id: R\r\n"
            "Content-Length: 0\r\n\r\n"
        ).encode()
    )


def test_builtin_308() -> None:
    data = AnswerSet().render(308, AnswerContext(redirect_location="/x")).data
    assert data.startswith(b"HTTP/1.1 308 Permanent Redirect\r\nLocation: /x\r\n")


def test_401_realm_header_only_when_set() -> None:
    answers = AnswerSet()
    without, _ = split(answers.render(401, CTX).data)
    assert not any(line.lower().startswith(b"www-authenticate") for line in without)
    ctx = AnswerContext(request_id="R", www_authenticate='Basic realm="x"')
    with_realm, _ = split(answers.render(401, ctx).data)
    assert with_realm[3] == b'WWW-Authenticate: Basic realm="x"'


@pytest.mark.parametrize("code", [429, 503])
def test_retry_after_only_when_set_and_non_zero(code: int) -> None:
    answers = AnswerSet()
    for retry in (None, 0):
        lines, _ = split(answers.render(code, AnswerContext(retry_after=retry)).data)
        assert not any(line.startswith(b"Retry-After") for line in lines)
    lines, _ = split(answers.render(code, AnswerContext(retry_after=7)).data)
    assert b"Retry-After: 7" in lines


def test_listener_sozu_id_header_name() -> None:
    lines, _ = split(AnswerSet(sozu_id_header="X-Trace").render(502, CTX).data)
    assert b"X-Trace: 01HRQ" in lines
    assert not any(line.startswith(b"Sozu-Id") for line in lines)
    assert "X-Trace: %REQUEST_ID" in builtin_text(502, "X-Trace")


def test_builtin_body_escapes_values() -> None:
    _, body = split(AnswerSet().render(400, AnswerContext(message="<script>")).data)
    assert b"&lt;script&gt;" in body
    assert b"<script>" not in body


def test_unknown_code_gets_a_generic_builtin() -> None:
    answer = AnswerSet().render(418, CTX)
    assert answer.data.startswith(b"HTTP/1.1 418 I'm a Teapot\r\nCache-Control: no-cache\r\n")
    assert answer.status == 418


def test_extra_headers_go_before_the_blank_line() -> None:
    data = (
        AnswerSet()
        .render(
            301,
            AnswerContext(redirect_location="/"),
            extra_headers=[(b"Strict-Transport-Security", b"max-age=1")],
        )
        .data
    )
    assert data.endswith(b"Content-Length: 0\r\nStrict-Transport-Security: max-age=1\r\n\r\n")


# ---------------------------------------------------------------------------------------------
# Custom templates

CUSTOM_503 = (
    "HTTP/1.1 503 Service Unavailable\r\n"
    "Connection: close\r\n"
    "Content-Length: 99\r\n"
    "\r\n"
    "custom %CLUSTER_ID %BACKEND_ID %REQUEST_ID"
)


def test_custom_template_verbatim_with_recomputed_length() -> None:
    answer = AnswerSet({"503": CUSTOM_503}).render(503, CTX)
    body = b"custom c1 b1 01HRQ"
    assert answer.data == (
        b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: %d\r\n\r\n"
        % len(body)
        + body
    )
    assert answer.close


def test_custom_template_without_content_length_gets_none_and_keeps_alive() -> None:
    template = "HTTP/1.1 404 Not Found\nX-Custom: yes\n\nnothing here"
    answer = AnswerSet({"404": template}).render(404, CTX)
    assert answer.data == b"HTTP/1.1 404 Not Found\r\nX-Custom: yes\r\n\r\nnothing here"
    assert not answer.close


def test_lf_and_crlf_mixed_newlines_normalised_in_head_only() -> None:
    template = "HTTP/1.1 400 Bad Request\r\nA: 1\nB: 2\r\n\nline1\nline2\r\n"
    data = AnswerSet({"400": template}).render(400, CTX).data
    assert data == b"HTTP/1.1 400 Bad Request\r\nA: 1\r\nB: 2\r\n\r\nline1\nline2\r\n"


def test_every_placeholder_is_substituted() -> None:
    names = [
        "REQUEST_ID",
        "CLUSTER_ID",
        "BACKEND_ID",
        "ROUTE",
        "REDIRECT_LOCATION",
        "WWW_AUTHENTICATE",
        "RETRY_AFTER",
        "MESSAGE",
        "PHASE",
        "SUCCESSFULLY_PARSED",
        "PARTIALLY_PARSED",
        "INVALID",
        "CAPACITY",
        "DURATION",
        "TEMPLATE_NAME",
    ]
    template = "HTTP/1.1 502 Bad Gateway\r\n\r\n" + "|".join(f"%{n}" for n in names)
    ctx = AnswerContext(
        request_id="rid",
        cluster_id="cid",
        backend_id="bid",
        route="GET h /p",
        redirect_location="loc",
        www_authenticate="realm",
        retry_after=3,
        message="msg",
        phase="Headers",
        successfully_parsed="sp",
        partially_parsed="pp",
        invalid="inv",
        capacity="16384",
        duration="30s",
        template_name="tn",
    )
    _, body = split(AnswerSet({"502": template}).render(502, ctx).data)
    assert body == b"rid|cid|bid|GET h /p|loc|realm|3|msg|Headers|sp|pp|inv|16384|30s|tn"


def test_unknown_percent_sequences_are_left_alone() -> None:
    template = "HTTP/1.1 404 Not Found\r\n\r\n100% %FOO %REQUEST_IDX"
    _, body = split(AnswerSet({"404": template}).render(404, CTX).data)
    assert body == b"100% %FOO 01HRQX"


def test_empty_realm_and_retry_after_lines_are_dropped() -> None:
    template = (
        "HTTP/1.1 401 Unauthorized\r\n"
        "WWW-Authenticate: %WWW_AUTHENTICATE\r\n"
        "Retry-After: %RETRY_AFTER\r\n"
        "X-Kept: %MESSAGE\r\n"
        "\r\n"
    )
    answers = AnswerSet({"401": template})
    assert answers.render(401, AnswerContext()).data == (
        b"HTTP/1.1 401 Unauthorized\r\nX-Kept: \r\n\r\n"
    )
    full = answers.render(401, AnswerContext(www_authenticate="Basic", retry_after=2)).data
    assert full == (
        b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic\r\nRetry-After: 2\r\n"
        b"X-Kept: \r\n\r\n"
    )


def test_header_values_cannot_inject_lines() -> None:
    template = "HTTP/1.1 301 Moved Permanently\r\nLocation: %REDIRECT_LOCATION\r\n\r\n"
    ctx = AnswerContext(redirect_location="/a\r\nSet-Cookie: x=1")
    data = AnswerSet({"301": template}).render(301, ctx).data
    assert data == b"HTTP/1.1 301 Moved Permanently\r\nLocation: /aSet-Cookie: x=1\r\n\r\n"


def test_file_template_is_read_once(tmp_path: Path) -> None:
    path = tmp_path / "404.http"
    path.write_text("HTTP/1.1 404 Not Found\nContent-Length: 0\n\nfrom file %REQUEST_ID")
    answers = AnswerSet({"404": f"file://{path}"})
    path.write_text("HTTP/1.1 404 Not Found\n\nchanged")
    assert answers.render(404, CTX).data == (
        b"HTTP/1.1 404 Not Found\r\nContent-Length: 15\r\n\r\nfrom file 01HRQ"
    )
    assert answers.warnings == []


def test_unreadable_file_falls_back_to_builtin_with_warning(tmp_path: Path) -> None:
    answers = AnswerSet({"404": f"file://{tmp_path}/missing"})
    assert answers.render(404, CTX).data == AnswerSet().render(404, CTX).data
    assert len(answers.warnings) == 1
    assert "missing" in answers.warnings[0]


def test_injected_file_reader() -> None:
    calls: list[str] = []

    def reader(path: str) -> str:
        calls.append(path)
        return "HTTP/1.1 503 Service Unavailable\r\n\r\nread"

    answers = AnswerSet({"503": "file:///etc/x"}, read_file=reader)
    answers.render(503, CTX)
    answers.render(503, CTX)
    assert calls == ["/etc/x"]
    assert answers.render(503, CTX).data.endswith(b"\r\n\r\nread")


@pytest.mark.parametrize(
    "template",
    [
        "not http\r\n\r\n",
        "HTTP/1.1 abc Oops\r\n\r\n",
        "HTTP/1.1 503 Service Unavailable\r\nno colon here\r\n\r\n",
        "HTTP/1.1 502 Bad Gateway\r\n\r\n",  # wrong status for the key
    ],
)
def test_invalid_templates_fall_back_with_warning(template: str) -> None:
    answers = AnswerSet({"503": template})
    assert answers.render(503, CTX).data == AnswerSet().render(503, CTX).data
    assert len(answers.warnings) == 1


def test_template_error_type() -> None:
    with pytest.raises(TemplateError):
        Template("garbage")


def test_non_numeric_key_is_ignored_with_warning() -> None:
    answers = AnswerSet({"custom": "HTTP/1.1 200 OK\r\n\r\n"})
    assert len(answers.warnings) == 1


def test_precedence_cluster_over_listener_over_builtin() -> None:
    listener = AnswerSet(
        {
            "503": "HTTP/1.1 503 Service Unavailable\r\n\r\nlistener",
            "404": "HTTP/1.1 404 Not Found\r\n\r\nlistener 404",
        }
    )
    cluster = Cluster(
        cluster_id="c1", answers={"503": "HTTP/1.1 503 Service Unavailable\r\n\r\ncluster"}
    )
    scoped = listener.for_cluster(cluster)
    assert scoped.render(503, CTX).data.endswith(b"\r\n\r\ncluster")
    assert scoped.render(404, CTX).data.endswith(b"\r\n\r\nlistener 404")
    assert scoped.render(502, CTX).data == AnswerSet().render(502, CTX).data
    assert listener.render(503, CTX).data.endswith(b"\r\n\r\nlistener")
    assert listener.for_cluster(None) is listener


def test_legacy_answer_503_and_answers_map_wins() -> None:
    listener = AnswerSet()
    legacy = Cluster(cluster_id="c", answer_503="HTTP/1.1 503 Service Unavailable\r\n\r\nold")
    assert listener.for_cluster(legacy).render(503, CTX).data.endswith(b"\r\n\r\nold")
    both = Cluster(
        cluster_id="d",
        answer_503="HTTP/1.1 503 Service Unavailable\r\n\r\nold",
        answers={"503": "HTTP/1.1 503 Service Unavailable\r\n\r\nnew"},
    )
    assert listener.for_cluster(both).render(503, CTX).data.endswith(b"\r\n\r\nnew")


def test_cluster_sets_are_cached_and_rebuilt_on_change() -> None:
    listener = AnswerSet()
    first = Cluster(cluster_id="c", answers={"503": "HTTP/1.1 503 X\r\n\r\none"})
    scoped = listener.for_cluster(first)
    assert listener.for_cluster(first) is scoped
    assert listener.for_cluster(Cluster(cluster_id="c", answers=dict(first.answers))) is scoped
    second = Cluster(cluster_id="c", answers={"503": "HTTP/1.1 503 X\r\n\r\ntwo"})
    assert listener.for_cluster(second).render(503, CTX).data.endswith(b"two")
    listener.forget_cluster("c")
    assert listener.for_cluster(second) is not scoped
    plain = Cluster(cluster_id="p")
    assert listener.for_cluster(plain) is listener


def test_inline_redirect_template_and_fallback() -> None:
    answers = AnswerSet()
    ctx = AnswerContext(request_id="R", redirect_location="https://new/")
    inline = "HTTP/1.1 301 Moved Permanently\nLocation: %REDIRECT_LOCATION\n\nmoved"
    answer = answers.render(301, ctx, inline_template=inline)
    assert answer.data == b"HTTP/1.1 301 Moved Permanently\r\nLocation: https://new/\r\n\r\nmoved"
    assert not answer.close
    broken = answers.render(301, ctx, inline_template="nonsense")
    assert broken.data == answers.render(301, ctx).data


def test_module_is_sans_io() -> None:
    code = (
        "import sys, sozu.worker.core.http.answers, sozu.worker.core.http.header_edits, "
        "sozu.worker.core.http.policy, sozu.worker.core.http.request_id; "
        "print(any(m in sys.modules for m in ('trio', 'socket', 'ssl')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
