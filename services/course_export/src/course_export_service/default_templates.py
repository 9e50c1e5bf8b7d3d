"""The SQL templates course-export ships with: portable across SQLite, PostgreSQL and MariaDB.

A centre replaces them over the REST API (validated, versioned); these are version 1 of each
kind. They select what is meant for publication: ``publish`` set and not finished. They avoid
dialect-specific SQL (no ``||``, which MariaDB reads as OR): joining names and formatting is the
mapping's job, not the query's.
"""

from __future__ import annotations

from course_export_service.templates import TemplateKind

DEFAULT_TEMPLATES: dict[TemplateKind, str] = {
    TemplateKind.COURSES: """
SELECT c.id AS course_id, c.number, c.row_version AS revision, c.title, c.subtitle,
       c.summary, c.description, c.notes, c.fee, c.teaching_units,
       c.min_participants, c.max_participants, c.status, c.registration_mode,
       c.registration_deadline, c.web_bookable, c.updated_at,
       s.code AS semester, parent.name AS category_area, cat.name AS category,
       l.name AS location_name, l.street AS location_street, l.postcode AS location_postcode,
       l.city AS location_city, l.accessible AS location_accessible, r.name AS room_name
FROM courses c
JOIN semesters s ON s.id = c.semester_id
JOIN categories cat ON cat.id = c.category_id
LEFT JOIN categories parent ON parent.id = cat.parent_id
LEFT JOIN locations l ON l.id = c.location_id
LEFT JOIN rooms r ON r.id = c.room_id
WHERE c.publish = TRUE AND c.status <> 'finished'
""",
    TemplateKind.SESSIONS: """
SELECT cs.course_id, cs.session_date, cs.start_time, cs.end_time, r.name AS room, cs.note
FROM course_sessions cs
JOIN courses c ON c.id = cs.course_id
LEFT JOIN rooms r ON r.id = cs.room_id
WHERE c.publish = TRUE AND c.status <> 'finished'
""",
    TemplateKind.LECTURERS: """
SELECT cl.course_id, cl.sort_order, lt.academic_title, lt.first_name, lt.last_name
FROM course_lecturers cl
JOIN courses c ON c.id = cl.course_id
JOIN lecturers lt ON lt.id = cl.lecturer_id
WHERE c.publish = TRUE AND c.status <> 'finished'
""",
    TemplateKind.DISCOUNTS: """
SELECT d.course_id, d.kind, d.label, d.percent_off, d.amount_off
FROM course_discounts d
JOIN courses c ON c.id = d.course_id
WHERE c.publish = TRUE AND c.status <> 'finished'
""",
}
