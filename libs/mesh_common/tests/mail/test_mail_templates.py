"""Editable templates on SQLite and PostgreSQL: seeding from code, rendering (escaping, parts,
layouts), validation before storing and activating (syntax, undefined variables, sandbox
escapes, limits), parts checked inside every mail, preview, and the audit trail."""

from __future__ import annotations

from typing import Any

import pytest
from mesh_common.errors import NotFound
from mesh_common.mail import (
    RenderLimits,
    TemplateDefault,
    TemplateInvalid,
    TemplateSource,
    TemplateStore,
)
from mesh_common.mail.rendering import Renderer

from .conftest import Env

BOOKING_SAMPLE = {
    "participant": {"first_name": "Erika", "last_name": "Muster"},
    "course": {"number": "261-100", "title": "Spanisch A1", "fee": "89,00 €"},
}

DEFAULTS = {
    "booking-confirmation": TemplateDefault(
        description="to the participant after a booking",
        subject="Ihre Anmeldung: {{ course.title }} ({{ course.number }})",
        text=(
            "Hallo {{ participant.first_name }},\n"
            "Sie sind für {{ course.title }} angemeldet.\n"
            "{% include 'signature' %}"
        ),
        html=(
            "<p>Hallo {{ participant.first_name }},</p>"
            "<p>Sie sind für <b>{{ course.title }}</b> angemeldet.</p>"
            "{% include 'signature' %}"
        ),
        layout="frame",
        sample=BOOKING_SAMPLE,
    ),
    "portal-access": TemplateDefault(
        subject="Portalzugang für {{ user_name }}",
        text="Ihr Zugang: {{ activation_link }} (gültig 30 Minuten)",
        sample={"user_name": "kunde42", "activation_link": "https://portal.example/a/xyz"},
    ),
    "signature": TemplateDefault(
        kind="part",
        text="-- \n{{ centre | default('Ihre Volkshochschule') }}",
        html="<p class='sig'>{{ centre | default('Ihre Volkshochschule') }}</p>",
        sample={"contact": {"phone": "0221 123"}},
    ),
    "frame": TemplateDefault(
        kind="part",
        text="{{ content }}\n\nImpressum: VHS Musterstadt",
        html="<html><body>{{ content }}<footer>Impressum</footer></body></html>",
    ),
}


def store_for(env: Env, **kw: Any) -> TemplateStore:
    store = TemplateStore(env.templates, DEFAULTS, **kw)
    store.bind(env.db)
    return store


@pytest.fixture
async def store(env: Env) -> TemplateStore:
    s = store_for(env, default_sample={"name": "Erika"})
    assert sorted(await s.ensure_defaults()) == sorted(DEFAULTS)
    return s


def errors_of(exc: pytest.ExceptionInfo[TemplateInvalid]) -> list[dict[str, Any]]:
    errors: list[dict[str, Any]] = exc.value.extra["errors"]
    return errors


async def test_defaults_are_seeded_once_and_audited(env: Env, store: TemplateStore) -> None:
    assert await store_for(env).ensure_defaults() == []  # a second replica seeds nothing
    infos = {t.name: t for t in await store.list_templates()}
    assert set(infos) == set(DEFAULTS)
    assert infos["signature"].kind == "part" and infos["booking-confirmation"].kind == "mail"
    assert all(t.active_version == 1 and t.latest_version == 1 for t in infos.values())
    audit = await store.audit()
    assert sorted((a.name, a.action, a.actor, a.version) for a in audit) == sorted(
        (name, "seeded", "system", 1) for name in DEFAULTS
    )


async def test_render_escapes_html_and_applies_parts_and_layout(store: TemplateStore) -> None:
    data = {
        "participant": {"first_name": "<script>alert(1)</script>"},
        "course": {"number": "261-100", "title": "Töpfern & Glasieren"},
    }
    r = await store.render("booking-confirmation", data)
    assert r.subject == "Ihre Anmeldung: Töpfern & Glasieren (261-100)"
    assert r.text == (
        "Hallo <script>alert(1)</script>,\nSie sind für Töpfern & Glasieren angemeldet.\n"
        "-- \nIhre Volkshochschule\n\nImpressum: VHS Musterstadt"
    )
    assert r.html is not None
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in r.html and "<script>" not in r.html
    assert "<b>Töpfern &amp; Glasieren</b>" in r.html
    assert r.html.startswith("<html><body><p>Hallo")  # the layout wraps the body, unescaped
    assert r.html.endswith(
        "<p class='sig'>Ihre Volkshochschule</p><footer>Impressum</footer></body></html>"
    )
    mail = r.mail(to="erika@example.org", category="booking-confirmation", ref="B-1")
    assert mail.subject == r.subject and mail.html == r.html


async def test_render_many_reads_the_active_versions_once(store: TemplateStore) -> None:
    data = {**BOOKING_SAMPLE, **DEFAULTS["portal-access"].sample}
    reads = 0
    active = store._active

    async def counted(session: Any) -> Any:
        nonlocal reads
        reads += 1
        return await active(session)

    store._active = counted  # type: ignore[method-assign]
    both = await store.render_many(["booking-confirmation", "portal-access"], data)
    assert reads == 1
    assert [r.subject for r in both] == [
        "Ihre Anmeldung: Spanisch A1 (261-100)",
        "Portalzugang für kunde42",
    ]
    assert both[0] == await store.render("booking-confirmation", data)
    with pytest.raises(NotFound):
        await store.render_many(["portal-access", "no-such-template"], data)
    with pytest.raises(TemplateInvalid):
        await store.render_many(["booking-confirmation"], {"participant": {}})


async def test_render_with_missing_data_is_refused(store: TemplateStore) -> None:
    with pytest.raises(TemplateInvalid) as exc:
        await store.render("booking-confirmation", {"participant": {"first_name": "E"}})
    (first, *_) = errors_of(exc)
    assert first["kind"] == "undefined" and "course" in first["message"]
    with pytest.raises(NotFound):
        await store.render("no-such-template", {})


async def test_syntax_error_is_refused_with_its_line(store: TemplateStore) -> None:
    source = TemplateSource(
        subject="Hallo {{ participant.first_name }}",
        text="Zeile 1\nZeile 2\n{% if course.title %}\nkein endif",
        html="<p>{{ course.title }</p>",
    )
    with pytest.raises(TemplateInvalid) as exc:
        await store.create_version("booking-confirmation", source, author="alice")
    errors = errors_of(exc)
    by_field = {e["field"]: e for e in errors}
    assert by_field["text"]["kind"] == "syntax" and by_field["text"]["line"] == 4
    assert by_field["html"]["kind"] == "syntax" and by_field["html"]["line"] == 1
    assert "subject" not in by_field
    assert exc.value.status == 422 and exc.value.code == "template-invalid"
    # Nothing was stored.
    assert [v.version for v in await store.versions("booking-confirmation")] == [1]
    assert not [a for a in await store.audit("booking-confirmation") if a.action == "created"]


async def test_undefined_variable_is_refused(store: TemplateStore) -> None:
    source = TemplateSource(subject="Hallo", text="Hallo {{ participant.frist_name }}")
    with pytest.raises(TemplateInvalid) as exc:
        await store.create_version("booking-confirmation", source, author="alice")
    (error,) = errors_of(exc)
    assert error["kind"] == "undefined" and "frist_name" in error["message"]
    assert error["line"] == 1


@pytest.mark.parametrize(
    "expression",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ participant.__class__.__base__.__subclasses__() }}",
        "{{ cycler.__init__.__globals__ }}",
        "{{ self._TemplateReference__context }}",
        "{{ participant.update({'first_name': 'x'}) }}",
        "{{ range.__self__ }}",
        "{{ (course.items() | list).append(1) }}",
    ],
)
async def test_sandbox_escapes_are_refused(store: TemplateStore, expression: str) -> None:
    source = TemplateSource(subject="x", text=f"a\n{expression}")
    with pytest.raises(TemplateInvalid) as exc:
        await store.create_version("booking-confirmation", source, author="mallory")
    (error,) = errors_of(exc)
    assert error["kind"] == "security", error
    assert error["line"] == 2
    assert [v.version for v in await store.versions("booking-confirmation")] == [1]


async def test_removed_globals_are_not_available(store: TemplateStore) -> None:
    with pytest.raises(TemplateInvalid) as exc:
        await store.create_version(
            "portal-access", TemplateSource(subject="x", text="{{ lipsum(5) }}"), author="a"
        )
    assert errors_of(exc)[0]["kind"] == "undefined"


@pytest.mark.parametrize(
    "text",
    [
        "{% for i in range(1000) %}{% for j in range(1000) %}{% endfor %}{% endfor %}",
        "{% macro f() %}{{ f() }}{{ f() }}{% endmacro %}{{ f() }}",
        "{{ 'x' * 10000000 }}",
        "{% set ns = namespace(s='ab') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}"
        "{% endfor %}",
        "{{ 'x' | center(100000000) }}",
        "{{ '{:>100000000}'.format(1) }}",
        "{% for i in range(300) %}{{ 'y' * 1000 }}{% endfor %}",
    ],
)
async def test_render_limits(env: Env, text: str) -> None:
    store = store_for(env, limits=RenderLimits(max_output_chars=100_000))
    await store.ensure_defaults()
    with pytest.raises(TemplateInvalid) as exc:
        await store.create_version(
            "portal-access", TemplateSource(subject="x", text=text), author="a"
        )
    assert errors_of(exc)[0]["kind"] == "limit", errors_of(exc)


async def test_versions_activation_and_rollback(store: TemplateStore) -> None:
    v2 = await store.create_version(
        "portal-access",
        TemplateSource(subject="Zugang {{ user_name }}", text="Link: {{ activation_link }}"),
        author="alice",
        comment="kürzer",
    )
    assert v2.version == 2 and not v2.active and v2.author == "alice"
    assert (await store.render("portal-access", DEFAULTS["portal-access"].sample)).subject == (
        "Portalzugang für kunde42"  # still version 1 until activated
    )
    active = await store.activate("portal-access", 2, actor="bob")
    assert active.active and active.version == 2
    r = await store.render("portal-access", {"user_name": "k7", "activation_link": "https://l"})
    assert (r.subject, r.text, r.html) == ("Zugang k7", "Link: https://l", None)

    await store.activate("portal-access", 1, actor="carol")  # roll back
    assert (await store.get("portal-access")).version == 1
    assert [(v.version, v.active) for v in await store.versions("portal-access")] == [
        (2, False),
        (1, True),
    ]
    audit = [
        (a.action, a.version, a.actor, (a.detail or {}).get("previous"))
        for a in await store.audit("portal-access")
    ]
    assert audit == [
        ("activated", 1, "carol", 2),
        ("activated", 2, "bob", 1),
        ("created", 2, "alice", None),
        ("seeded", 1, "system", None),
    ]
    v3 = await store.create_version(
        "portal-access",
        TemplateSource(subject="Z {{ user_name }}", text="{{ activation_link }}"),
        author="dave",
        activate=True,
    )
    assert v3.version == 3 and v3.active
    with pytest.raises(NotFound):
        await store.activate("portal-access", 9, actor="x")


async def test_a_part_is_checked_inside_every_mail(store: TemplateStore, env: Env) -> None:
    # Fine on its own (the part's sample has a contact) but the booking mail's sample has none:
    # refused, naming the mail it would break.
    broken = TemplateSource(text="-- \nTel. {{ contact.phone }}", html="<p>{{ contact.phone }}</p>")
    assert (await store.preview("signature", source=broken))[0].text == "-- \nTel. 0221 123"
    with pytest.raises(TemplateInvalid) as exc:
        await store.create_version("signature", broken, author="alice")
    errors = errors_of(exc)
    assert {(e["template"], e["via"], e["kind"], e["field"]) for e in errors} == {
        ("signature", "booking-confirmation", "undefined", "text"),
        ("signature", "booking-confirmation", "undefined", "html"),
    }
    assert all("contact" in e["message"] for e in errors)

    ok = TemplateSource(text="-- \nVHS Musterstadt", html="<p>VHS Musterstadt</p>")
    v2 = await store.create_version("signature", ok, author="alice", activate=True)
    assert v2.active
    r = await store.render("booking-confirmation", BOOKING_SAMPLE)
    assert "VHS Musterstadt" in r.text and r.html is not None and "<p>VHS Musterstadt</p>" in r.html

    # A part without HTML breaks the HTML of mails that include it: refused as well.
    with pytest.raises(TemplateInvalid) as exc2:
        await store.create_version("signature", TemplateSource(text="-- \nVHS"), author="alice")
    (error,) = errors_of(exc2)
    assert (error["kind"], error["template"], error["field"], error["via"]) == (
        "missing-part",
        "booking-confirmation",
        "html",
        "booking-confirmation",
    )


async def test_layout_must_exist(store: TemplateStore) -> None:
    source = TemplateSource(subject="x", text="y", layout="no-such-frame")
    with pytest.raises(TemplateInvalid) as exc:
        await store.create_version("portal-access", source, author="a")
    assert errors_of(exc)[0]["field"] == "layout"


async def test_new_names_and_kinds(env: Env, store: TemplateStore) -> None:
    created = await store.create_version(
        "reminder",
        TemplateSource(subject="Erinnerung für {{ name }}", text="Hallo {{ name }}"),
        author="alice",
        activate=True,
        description="a reminder",
    )
    assert created.kind == "mail" and created.version == 1
    assert (await store.render("reminder", {"name": "Jo"})).subject == "Erinnerung für Jo"
    part = await store.create_version(
        "signature-short", TemplateSource(text="-- VHS"), author="alice", kind="part"
    )
    assert part.kind == "part" and not part.active
    with pytest.raises(TemplateInvalid):  # a mail needs a subject
        await store.create_version("other", TemplateSource(text="x"), author="a")
    with pytest.raises(TemplateInvalid):  # a part has none
        await store.create_version("signature", TemplateSource(subject="x", text="y"), author="a")
    closed = store_for(env, allow_new=False)
    with pytest.raises(NotFound):
        await closed.create_version("brand-new", TemplateSource(subject="x", text="y"), author="a")


async def test_preview(store: TemplateStore) -> None:
    r, data = await store.preview("booking-confirmation")
    assert data == BOOKING_SAMPLE and "Erika" in r.text
    r, _ = await store.preview(
        "booking-confirmation",
        context={"participant": {"first_name": "Ada"}, "course": {"number": "1", "title": "T"}},
    )
    assert r.subject == "Ihre Anmeldung: T (1)" and "Ada" in r.text
    r, _ = await store.preview(
        "booking-confirmation",
        source=TemplateSource(
            subject="Neu: {{ course.title }}", text="{{ participant.last_name }}"
        ),
    )
    assert (r.subject, r.text, r.html) == ("Neu: Spanisch A1", "Muster", None)
    r, _ = await store.preview("frame")
    assert "[the mail's text goes here]" in r.text
    with pytest.raises(TemplateInvalid):
        await store.preview(
            "booking-confirmation", source=TemplateSource(subject="x", text="{{ y }}")
        )
    # Previews store nothing.
    assert [v.version for v in await store.versions("booking-confirmation")] == [1]


async def test_invalid_defaults_stop_the_start(env: Env) -> None:
    bad = TemplateStore(
        env.templates,
        {"x": TemplateDefault(subject="s", text="{{ missing }}")},
        db=env.db,
    )
    with pytest.raises(ValueError, match="missing"):
        await bad.ensure_defaults()
    assert await bad.list_templates() == []


def test_compiled_templates_are_reused_and_parts_stay_current() -> None:
    """Compiling is the expensive step: the same source compiles once, a new source or a changed
    part takes effect at once, and the limits still hold for a cached template."""
    renderer = Renderer(RenderLimits(max_operations=50))
    compiled: list[str] = []
    for env in (renderer.text_env, renderer.html_env):
        original = env.compile

        def counting(
            source: Any, name: Any = None, *a: Any, _orig: Any = original, **k: Any
        ) -> Any:
            compiled.append(str(name))
            return _orig(source, name, *a, **k)

        env.compile = counting  # type: ignore[method-assign]
    parts = {"sig": ("-- {{ who }}", "<p>{{ who }}</p>")}
    body = "Hallo {{ name }}\n{% include 'sig' %}"
    for name in ("Erika", "Max"):
        out, problem = renderer.render_field(
            "text", "m", "text", body, {"name": name, "who": "VHS"}, parts
        )
        assert problem is None and out == f"Hallo {name}\n-- VHS"
    assert sorted(compiled) == ["m:text", "sig"]  # once each, for two renders

    changed = {"sig": ("-- {{ who }} Musterstadt", None)}
    out, _ = renderer.render_field("text", "m", "text", body, {"name": "E", "who": "VHS"}, changed)
    assert out == "Hallo E\n-- VHS Musterstadt"
    out, _ = renderer.render_field("text", "m", "text", "Tag {{ name }}", {"name": "E"}, parts)
    assert out == "Tag E"
    _, missing = renderer.render_field("html", "m", "html", "{% include 'gone' %}", {}, parts)
    assert missing is not None and missing.kind == "missing-part"

    loop = "{% for i in range(40) %}{% for j in range(40) %}{% endfor %}{% endfor %}"
    for _ in range(2):
        _, problem = renderer.render_field("text", "m", "text", loop, {}, parts)
        assert problem is not None and problem.kind == "limit"
