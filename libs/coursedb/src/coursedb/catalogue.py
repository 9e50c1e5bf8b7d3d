"""The vocabulary of the demo data: a German Volkshochschule's programme, places and banks.

Static, hand-written data only (titles per Fachbereich, typical course shapes, locations and rooms
in Freiburg im Breisgau, real German banks' Bankleitzahl/BIC). ``coursedb.seed`` draws from it.
The six Fachbereiche follow the programme areas of the German VHS statistics. Addresses of
locations are plausible, not those of any real institution. Data only: no randomness, no I/O.
"""

# German typography: titles use the en dash (U+2013), as in "Spanisch A1 - Einstieg".
# ruff: noqa: RUF001, RUF002

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Subcategory:
    """A subcategory and the shape of its typical course."""

    code: str  # "101": Fachbereich 1, subcategory 01 (also the middle of the course number)
    name: str
    weight: float  # share of the programme
    titles: tuple[str, ...]
    sessions: tuple[int, int]  # number of sessions, min..max
    minutes: tuple[int, ...]  # session length choices
    max_participants: tuple[int, int]
    min_participants: int
    rate: tuple[float, float]  # EUR per teaching unit (45 minutes)
    room_kinds: tuple[str, ...]  # preferred rooms; empty = meeting point / outdoors
    notes: tuple[str, ...] = ()  # "Bitte mitbringen: ..."
    fee_floor: float = 49.0
    fee_cap: float = 320.0


@dataclass(frozen=True, slots=True)
class Fachbereich:
    code: str
    name: str
    summaries: tuple[str, ...]  # teaser sentences; "{title}" is filled in
    sentences: tuple[str, ...]  # further sentences for the long description
    subcategories: tuple[Subcategory, ...]


LANGUAGE_LEVELS: dict[str, tuple[str, ...]] = {
    "A1": ("Einstieg", "Einstieg am Vormittag", "Intensiver Einstieg", "für die Reise"),
    "A2": ("Fortsetzung", "Fortsetzung am Abend", "Auffrischung"),
    "B1": ("Konversation", "Grammatik kompakt", "Fortsetzung"),
    "B2": ("Konversation", "Beruf und Business", "Prüfungsvorbereitung"),
    "C1": ("Diskussionsrunde", "Literatur im Original"),
}

OTHER_LANGUAGES: tuple[str, ...] = (
    "Portugiesisch",
    "Türkisch",
    "Arabisch",
    "Russisch",
    "Polnisch",
    "Japanisch",
    "Chinesisch",
    "Niederländisch",
    "Schwedisch",
    "Neugriechisch",
    "Ukrainisch",
    "Deutsche Gebärdensprache",
)


def _language(code: str, name: str, weight: float) -> Subcategory:
    """A language subcategory: titles are built as "<language> <level> – <variant>"."""
    return Subcategory(
        code,
        name,
        weight,
        ("{lang}",),
        sessions=(8, 15),
        minutes=(90,),
        max_participants=(8, 16),
        min_participants=6,
        rate=(4.2, 5.2),
        room_kinds=("seminar",),
        notes=("Bitte bringen Sie das im Kurs verwendete Lehrbuch mit.", ""),
    )


FACHBEREICHE: tuple[Fachbereich, ...] = (
    Fachbereich(
        "1",
        "Gesellschaft",
        summaries=(
            "{title}: Hintergründe verstehen, Fragen stellen, mitreden.",
            "Kompakt und verständlich – {title} mit Raum für Ihre Fragen.",
            "Ein Angebot für alle, die sich für {title} interessieren.",
        ),
        sentences=(
            "Die Veranstaltung verbindet einen kurzen Input mit einem offenen Gespräch.",
            "Vorkenntnisse sind nicht erforderlich.",
            "Die Referentin bzw. der Referent bringt aktuelle Materialien und Quellen mit.",
            "Im Anschluss besteht Gelegenheit zur Diskussion.",
        ),
        subcategories=(
            Subcategory(
                "101",
                "Politik und Zeitgeschehen",
                weight=1.2,
                titles=(
                    "Politik am Abend: Europa nach der Wahl",
                    "Demokratie verstehen",
                    "Kommunalpolitik zum Mitmachen",
                    "Der Nahostkonflikt – Hintergründe",
                    "Desinformation erkennen",
                    "Gesprächskreis Zeitgeschehen",
                ),
                sessions=(1, 4),
                minutes=(90, 120),
                max_participants=(20, 60),
                min_participants=5,
                rate=(3.0, 4.0),
                room_kinds=("seminar", "hall"),
                fee_floor=8.0,
            ),
            Subcategory(
                "102",
                "Geschichte und Stadtführungen",
                weight=1.2,
                titles=(
                    "Stadtführung: Freiburg im Mittelalter",
                    "Stadtführung: Jüdisches Leben in Freiburg",
                    "Das Münster und seine Baumeister",
                    "Führung: Die Bächle und ihre Geschichte",
                    "Exkursion: Auf den Spuren der Römer am Oberrhein",
                    "Geschichte des Breisgaus",
                ),
                sessions=(1, 1),
                minutes=(90, 120, 180),
                max_participants=(15, 25),
                min_participants=8,
                rate=(2.5, 3.5),
                room_kinds=(),
                notes=("Treffpunkt siehe Kursort; festes Schuhwerk empfohlen.",),
                fee_floor=9.0,
            ),
            Subcategory(
                "103",
                "Recht und Finanzen",
                weight=1.0,
                titles=(
                    "Erbrecht – was muss ich wissen?",
                    "Patientenverfügung und Vorsorgevollmacht",
                    "Geldanlage für Einsteiger",
                    "Mietrecht für Mieterinnen und Mieter",
                    "Die Steuererklärung selbst machen",
                    "Altersvorsorge verständlich erklärt",
                ),
                sessions=(1, 3),
                minutes=(90, 120),
                max_participants=(15, 40),
                min_participants=6,
                rate=(4.0, 5.0),
                room_kinds=("seminar", "hall"),
                fee_floor=12.0,
            ),
            Subcategory(
                "104",
                "Umwelt und Natur",
                weight=1.0,
                titles=(
                    "Klimawandel verstehen",
                    "Gärtnern ohne Gift",
                    "Imkerei für Einsteiger",
                    "Wildkräuterwanderung",
                    "Balkon-Solaranlagen selbst installieren",
                    "Vogelstimmen-Exkursion am Morgen",
                    "Nachhaltig leben im Alltag",
                ),
                sessions=(1, 5),
                minutes=(90, 120, 180),
                max_participants=(10, 20),
                min_participants=6,
                rate=(3.5, 5.0),
                room_kinds=("seminar",),
                notes=("Bitte wetterfeste Kleidung mitbringen.", ""),
                fee_floor=12.0,
            ),
            Subcategory(
                "105",
                "Psychologie und Pädagogik",
                weight=1.2,
                titles=(
                    "Resilienz – gestärkt durch Krisen",
                    "Pubertät – Eltern bleiben gelassen",
                    "Gewaltfreie Kommunikation",
                    "Achtsam durch den Alltag",
                    "Trauer verstehen und begleiten",
                    "Gedächtnistraining",
                ),
                sessions=(1, 6),
                minutes=(90, 120, 180),
                max_participants=(10, 18),
                min_participants=6,
                rate=(4.0, 5.0),
                room_kinds=("seminar",),
            ),
            Subcategory(
                "106",
                "Philosophie und Religion",
                weight=0.6,
                titles=(
                    "Philosophisches Café",
                    "Einführung in die Ethik",
                    "Weltreligionen im Gespräch",
                    "Stoische Lebenskunst",
                    "Lektürekurs: Hannah Arendt",
                ),
                sessions=(1, 6),
                minutes=(90,),
                max_participants=(12, 30),
                min_participants=5,
                rate=(3.0, 4.0),
                room_kinds=("seminar",),
                fee_floor=8.0,
            ),
        ),
    ),
    Fachbereich(
        "2",
        "Kultur",
        summaries=(
            "{title}: ausprobieren, gestalten, dranbleiben.",
            "In {title} entdecken Sie Ihre kreative Seite – in entspannter Atmosphäre.",
            "Praxisnah und mit viel Zeit zum eigenen Arbeiten: {title}.",
        ),
        sentences=(
            "Anfängerinnen und Anfänger sind ebenso willkommen wie Fortgeschrittene.",
            "Die Kursleitung zeigt grundlegende Techniken und begleitet Ihre eigenen Projekte.",
            "Materialkosten werden im Kurs direkt mit der Kursleitung abgerechnet.",
            "Am Ende des Kurses zeigen wir die Ergebnisse in einer kleinen Präsentation.",
        ),
        subcategories=(
            Subcategory(
                "201",
                "Malen und Zeichnen",
                weight=1.5,
                titles=(
                    "Aquarellmalerei",
                    "Acrylmalerei für Einsteiger",
                    "Zeichnen lernen",
                    "Urban Sketching",
                    "Porträtzeichnen",
                    "Kalligrafie",
                    "Offenes Atelier",
                ),
                sessions=(1, 8),
                minutes=(150, 180, 360),
                max_participants=(8, 14),
                min_participants=6,
                rate=(4.0, 5.5),
                room_kinds=("studio",),
                notes=(
                    "Bitte mitbringen: Bleistifte, Skizzenbuch; weiteres Material nach Absprache.",
                ),
            ),
            Subcategory(
                "202",
                "Musik",
                weight=0.9,
                titles=(
                    "Gitarre für Einsteiger",
                    "Ukulele-Workshop",
                    "Offenes Singen",
                    "Chorwerkstatt",
                    "Klavier für Erwachsene",
                    "Trommeln – Djembe",
                ),
                sessions=(1, 10),
                minutes=(90, 120),
                max_participants=(6, 16),
                min_participants=5,
                rate=(4.5, 6.0),
                room_kinds=("seminar", "hall"),
                notes=("Bitte bringen Sie Ihr Instrument mit.", ""),
            ),
            Subcategory(
                "203",
                "Tanz",
                weight=0.9,
                titles=(
                    "Tango Argentino",
                    "Salsa für Paare",
                    "Discofox",
                    "Orientalischer Tanz",
                    "Line Dance",
                    "Standardtänze – Auffrischung",
                ),
                sessions=(4, 8),
                minutes=(90,),
                max_participants=(10, 24),
                min_participants=8,
                rate=(4.0, 5.0),
                room_kinds=("gym",),
                notes=("Anmeldung nur paarweise möglich.", "Bitte bequeme Schuhe mitbringen."),
            ),
            Subcategory(
                "204",
                "Handwerk und Gestalten",
                weight=1.2,
                titles=(
                    "Töpfern an der Scheibe",
                    "Nähen mit der Nähmaschine",
                    "Goldschmieden",
                    "Holzwerkstatt: Schneidebretter",
                    "Upcycling – Taschen aus Stoffresten",
                    "Buchbinden",
                    "Filzen",
                ),
                sessions=(1, 6),
                minutes=(180, 240, 360),
                max_participants=(6, 10),
                min_participants=5,
                rate=(5.0, 6.5),
                room_kinds=("workshop", "studio"),
                notes=("Zzgl. Materialkosten, direkt an die Kursleitung zu zahlen.",),
            ),
            Subcategory(
                "205",
                "Literatur und Schreiben",
                weight=0.6,
                titles=(
                    "Kreatives Schreiben",
                    "Biografisches Schreiben",
                    "Literaturkreis",
                    "Lyrik-Werkstatt",
                    "Schreiben für Kinder",
                ),
                sessions=(3, 8),
                minutes=(120,),
                max_participants=(8, 14),
                min_participants=5,
                rate=(4.0, 5.0),
                room_kinds=("seminar",),
            ),
            Subcategory(
                "206",
                "Fotografie und Film",
                weight=0.8,
                titles=(
                    "Digitalfotografie – Grundlagen",
                    "Smartphone-Fotografie",
                    "Bildbearbeitung mit GIMP",
                    "Videos schneiden mit DaVinci Resolve",
                    "Porträtfotografie",
                ),
                sessions=(1, 5),
                minutes=(180, 360),
                max_participants=(8, 12),
                min_participants=6,
                rate=(5.0, 6.0),
                room_kinds=("computer", "studio"),
                notes=("Bitte bringen Sie Ihre Kamera und die Bedienungsanleitung mit.", ""),
            ),
        ),
    ),
    Fachbereich(
        "3",
        "Gesundheit",
        summaries=(
            "{title} – etwas Gutes für Körper und Seele.",
            "Mit {title} finden Sie zu mehr Beweglichkeit, Kraft und Gelassenheit.",
            "{title}: angeleitet, in kleiner Gruppe und ohne Leistungsdruck.",
        ),
        sentences=(
            "Die Übungen werden an Ihre individuellen Möglichkeiten angepasst.",
            "Bei gesundheitlichen Einschränkungen sprechen Sie bitte vorab mit Ihrer Ärztin "
            "oder Ihrem Arzt.",
            "Viele Krankenkassen bezuschussen die Teilnahme an Präventionskursen.",
            "Zum Abschluss jeder Einheit gibt es eine kurze Entspannungsphase.",
        ),
        subcategories=(
            Subcategory(
                "301",
                "Bewegung",
                weight=4.5,
                titles=(
                    "Yoga am Morgen",
                    "Hatha-Yoga für Einsteiger",
                    "Pilates",
                    "Rückenfit",
                    "Wirbelsäulengymnastik",
                    "Zumba",
                    "Faszientraining",
                    "Beckenbodentraining",
                    "Nordic Walking",
                    "Yoga für Schwangere",
                    "Qigong",
                    "Tai-Chi-Chuan",
                ),
                sessions=(6, 12),
                minutes=(60, 75, 90),
                max_participants=(10, 18),
                min_participants=8,
                rate=(3.8, 4.8),
                room_kinds=("gym",),
                notes=("Bitte mitbringen: bequeme Kleidung, Matte, Decke und ein kleines Kissen.",),
            ),
            Subcategory(
                "302",
                "Entspannung",
                weight=1.8,
                titles=(
                    "Autogenes Training",
                    "Progressive Muskelentspannung nach Jacobson",
                    "Meditation für Einsteiger",
                    "Stressbewältigung durch Achtsamkeit (MBSR)",
                    "Feldenkrais",
                    "Yin Yoga am Abend",
                ),
                sessions=(4, 8),
                minutes=(75, 90),
                max_participants=(8, 15),
                min_participants=6,
                rate=(4.0, 5.0),
                room_kinds=("gym", "seminar"),
                notes=("Bitte mitbringen: warme Socken, Decke.",),
            ),
            Subcategory(
                "303",
                "Ernährung und Kochen",
                weight=2.0,
                titles=(
                    "Vegetarische Küche",
                    "Indische Küche",
                    "Brot backen wie früher",
                    "Schnelle Feierabendküche",
                    "Vegan kochen",
                    "Fermentieren",
                    "Kochen für Männer",
                    "Badische Küche",
                ),
                sessions=(1, 3),
                minutes=(180, 240),
                max_participants=(8, 12),
                min_participants=6,
                rate=(6.0, 8.0),
                room_kinds=("kitchen",),
                notes=(
                    "Zzgl. Lebensmittelumlage, im Kurs zu zahlen. "
                    "Bitte Schürze und Behälter für Reste mitbringen.",
                ),
            ),
            Subcategory(
                "304",
                "Gesundheitsbildung",
                weight=0.8,
                titles=(
                    "Erste Hilfe am Kind",
                    "Gesund schlafen",
                    "Heilkräuter im Alltag",
                    "Fastenwoche mit Begleitung",
                    "Rauchfrei in sechs Wochen",
                ),
                sessions=(1, 6),
                minutes=(90, 180, 360),
                max_participants=(10, 20),
                min_participants=6,
                rate=(4.0, 5.5),
                room_kinds=("seminar",),
            ),
        ),
    ),
    Fachbereich(
        "4",
        "Sprachen",
        summaries=(
            "{title}: Sie sprechen von der ersten Stunde an und lernen für echte Situationen.",
            "Kommunikativ, lebendig und mit System – {title} nach dem Gemeinsamen "
            "Europäischen Referenzrahmen.",
            "{title}: Wortschatz erweitern, Grammatik festigen und mutig sprechen.",
        ),
        sentences=(
            "Ein kostenloser Einstufungstest hilft Ihnen, den passenden Kurs zu finden.",
            "Wir arbeiten mit einem Lehrbuch und ergänzenden Materialien der Kursleitung.",
            "Hausaufgaben sind freiwillig, helfen aber beim Dranbleiben.",
            "Der Kurs wird im nächsten Semester auf der folgenden Niveaustufe fortgesetzt.",
        ),
        subcategories=(
            _language("401", "Deutsch als Fremdsprache", 3.0),
            _language("402", "Englisch", 5.0),
            _language("403", "Französisch", 2.5),
            _language("404", "Spanisch", 3.5),
            _language("405", "Italienisch", 2.5),
            _language("406", "Weitere Sprachen", 2.5),
        ),
    ),
    Fachbereich(
        "5",
        "Beruf",
        summaries=(
            "{title}: praxisnah, kompakt und direkt im Beruf anwendbar.",
            "In {title} arbeiten Sie an konkreten Aufgaben aus dem Berufsalltag.",
            "{title} – für Beschäftigte, Wiedereinsteigende und alle, die dazulernen wollen.",
        ),
        sentences=(
            "Jede Teilnehmerin und jeder Teilnehmer arbeitet an einem eigenen Rechner.",
            "Sie erhalten ein Skript und Übungsdateien zum Nacharbeiten.",
            "Auf Wunsch stellen wir eine Teilnahmebescheinigung aus.",
            "Der Kurs ist als Bildungszeit nach dem Bildungszeitgesetz anerkannt.",
        ),
        subcategories=(
            Subcategory(
                "501",
                "EDV-Grundlagen",
                weight=1.0,
                titles=(
                    "Computer-Grundkurs",
                    "Windows 11 – sicher im Alltag",
                    "Dateien und Ordner im Griff",
                    "Zehnfingersystem am PC",
                ),
                sessions=(3, 6),
                minutes=(180,),
                max_participants=(8, 12),
                min_participants=5,
                rate=(5.0, 6.0),
                room_kinds=("computer",),
            ),
            Subcategory(
                "502",
                "Office-Anwendungen",
                weight=1.6,
                titles=(
                    "Excel für Einsteiger",
                    "Excel – Pivot-Tabellen",
                    "Excel – Formeln und Funktionen",
                    "Word Grundlagen",
                    "PowerPoint – überzeugend präsentieren",
                    "Outlook effizient nutzen",
                ),
                sessions=(1, 5),
                minutes=(180, 360),
                max_participants=(8, 12),
                min_participants=5,
                rate=(5.5, 7.0),
                room_kinds=("computer",),
            ),
            Subcategory(
                "503",
                "IT und Programmierung",
                weight=1.0,
                titles=(
                    "Python-Programmierung für Einsteiger",
                    "Homepage mit WordPress",
                    "Künstliche Intelligenz im Beruf",
                    "Datenschutz und IT-Sicherheit im Büro",
                    "SQL – Datenbanken abfragen",
                ),
                sessions=(2, 8),
                minutes=(180, 360),
                max_participants=(8, 12),
                min_participants=5,
                rate=(6.0, 7.5),
                room_kinds=("computer",),
                notes=("Bitte bringen Sie einen eigenen Laptop mit.", ""),
            ),
            Subcategory(
                "504",
                "Kaufmännische Praxis",
                weight=0.8,
                titles=(
                    "Buchführung Grundlagen",
                    "Lohn und Gehalt",
                    "Xpert Business: Finanzbuchführung 1",
                    "Kosten- und Leistungsrechnung",
                    "DATEV Kanzlei-Rechnungswesen",
                ),
                sessions=(6, 12),
                minutes=(180,),
                max_participants=(10, 16),
                min_participants=6,
                rate=(3.5, 4.5),
                room_kinds=("seminar", "computer"),
            ),
            Subcategory(
                "505",
                "Kommunikation und Selbstmanagement",
                weight=1.0,
                titles=(
                    "Rhetorik",
                    "Zeitmanagement",
                    "Konfliktmanagement",
                    "Bewerbungstraining",
                    "Souverän auftreten",
                    "Projektmanagement kompakt",
                ),
                sessions=(1, 3),
                minutes=(360,),
                max_participants=(8, 14),
                min_participants=6,
                rate=(5.0, 6.5),
                room_kinds=("seminar",),
            ),
        ),
    ),
    Fachbereich(
        "6",
        "Grundbildung",
        summaries=(
            "{title}: in kleinen Gruppen, in Ihrem Tempo, mit viel Unterstützung.",
            "{title} – Schritt für Schritt und ohne Prüfungsdruck.",
        ),
        sentences=(
            "Die Kursleitung nimmt sich Zeit für Ihre Fragen.",
            "Ein unverbindliches Beratungsgespräch ist jederzeit möglich.",
            "Das Angebot wird aus Landesmitteln gefördert.",
        ),
        subcategories=(
            Subcategory(
                "601",
                "Lesen und Schreiben",
                weight=0.5,
                titles=(
                    "Lesen und Schreiben lernen",
                    "Richtig schreiben – Auffrischung",
                    "Alphabetisierung für Erwachsene",
                ),
                sessions=(10, 20),
                minutes=(90,),
                max_participants=(6, 10),
                min_participants=4,
                rate=(1.5, 2.5),
                room_kinds=("seminar",),
            ),
            Subcategory(
                "602",
                "Rechnen",
                weight=0.4,
                titles=(
                    "Rechnen im Alltag",
                    "Mathematik – Auffrischung",
                    "Prozentrechnen und Dreisatz",
                ),
                sessions=(8, 12),
                minutes=(90,),
                max_participants=(6, 10),
                min_participants=4,
                rate=(2.0, 3.0),
                room_kinds=("seminar",),
            ),
            Subcategory(
                "603",
                "Schulabschlüsse",
                weight=0.4,
                titles=(
                    "Hauptschulabschluss",
                    "Mittlerer Schulabschluss",
                    "Englisch für den Schulabschluss",
                    "Mathematik für den Schulabschluss",
                ),
                sessions=(20, 30),
                minutes=(180,),
                max_participants=(12, 20),
                min_participants=8,
                rate=(1.0, 1.5),
                room_kinds=("seminar",),
            ),
            Subcategory(
                "604",
                "Digitale Grundbildung",
                weight=0.9,
                titles=(
                    "Smartphone-Grundlagen",
                    "Tablet für Seniorinnen und Senioren",
                    "Online-Banking sicher nutzen",
                    "Videotelefonie mit der Familie",
                ),
                sessions=(2, 4),
                minutes=(120, 180),
                max_participants=(6, 10),
                min_participants=4,
                rate=(4.0, 5.0),
                room_kinds=("computer", "seminar"),
                notes=("Bitte bringen Sie Ihr eigenes Gerät (geladen) mit.",),
            ),
        ),
    ),
)


@dataclass(frozen=True, slots=True)
class Place:
    name: str
    street: str
    postcode: str
    accessible: bool
    rooms: tuple[tuple[str, str, int], ...]  # (name, kind, capacity)


CITY = "Freiburg im Breisgau"

PLACES: tuple[Place, ...] = (
    Place(
        "Volkshochschulhaus am Rotteckring",
        "Rotteckring 12",
        "79098",
        True,
        (
            ("Raum 1.01", "seminar", 18),
            ("Raum 1.02", "seminar", 16),
            ("Raum 1.03", "seminar", 20),
            ("Raum 1.04", "seminar", 16),
            ("Raum 2.01", "seminar", 24),
            ("Raum 2.02", "seminar", 14),
            ("EDV-Raum 1", "computer", 12),
            ("EDV-Raum 2", "computer", 12),
            ("Saal", "hall", 80),
            ("Atelier", "studio", 14),
        ),
    ),
    Place(
        "Bildungszentrum Haslach",
        "Carl-Kistner-Straße 67",
        "79115",
        True,
        (
            ("Seminarraum A", "seminar", 16),
            ("Seminarraum B", "seminar", 20),
            ("Bewegungsraum", "gym", 18),
            ("EDV-Raum", "computer", 10),
        ),
    ),
    Place(
        "Stadtteiltreff Weingarten",
        "Krozinger Straße 60",
        "79114",
        False,
        (
            ("Gruppenraum", "seminar", 14),
            ("Bewegungsraum", "gym", 16),
        ),
    ),
    Place(
        "Schulzentrum Landwasser",
        "Auwaldstraße 90",
        "79110",
        True,
        (
            ("Klassenzimmer 1", "seminar", 22),
            ("Klassenzimmer 2", "seminar", 22),
            ("Lehrküche", "kitchen", 12),
            ("Werkraum", "workshop", 12),
        ),
    ),
    Place(
        "Haus der Familie",
        "Guntramstraße 15",
        "79106",
        False,
        (
            ("Lehrküche", "kitchen", 12),
            ("Gruppenraum 1", "seminar", 12),
            ("Gruppenraum 2", "seminar", 14),
            ("Bewegungsraum", "gym", 15),
        ),
    ),
    Place(
        "Kunstwerkstatt Stühlinger",
        "Eschholzstraße 8",
        "79106",
        False,
        (
            ("Atelier 1", "studio", 12),
            ("Atelier 2", "studio", 12),
            ("Töpferwerkstatt", "workshop", 10),
            ("Fotostudio", "studio", 10),
        ),
    ),
    Place(
        "Bürgerhaus Zähringen",
        "Lameystraße 2",
        "79108",
        True,
        (
            ("Saal", "hall", 100),
            ("Clubraum", "seminar", 16),
            ("Tanzsaal", "gym", 30),
        ),
    ),
    Place(
        "Gemeindezentrum Littenweiler",
        "Lindenmattenstraße 18",
        "79117",
        True,
        (
            ("Gemeindesaal", "hall", 60),
            ("Gruppenraum", "seminar", 14),
        ),
    ),
    Place("Sporthalle Vauban", "Vaubanallee 11", "79100", True, (("Gymnastikhalle", "gym", 25),)),
    # Guided tours and excursions meet outside: a location without rooms.
    Place("Treffpunkt Münsterplatz (vor dem Hauptportal)", "Münsterplatz 1", "79098", True, ()),
)

# Streets and postcodes of the centre's city, for most participants' addresses.
CITY_STREETS: tuple[str, ...] = (
    "Kaiser-Joseph-Straße",
    "Bertoldstraße",
    "Habsburgerstraße",
    "Merzhauser Straße",
    "Basler Straße",
    "Schwarzwaldstraße",
    "Hansjakobstraße",
    "Günterstalstraße",
    "Lorettostraße",
    "Sundgauallee",
    "Elsässer Straße",
    "Breisacher Straße",
    "Eschholzstraße",
    "Wentzingerstraße",
    "Carl-Kistner-Straße",
    "Staufener Straße",
    "Opfinger Straße",
    "Tullastraße",
    "Zähringer Straße",
    "Hauptstraße",
    "Stadtstraße",
    "Komturstraße",
    "Waldkircher Straße",
    "Wiesentalstraße",
    "Kartäuserstraße",
    "Hirzbergstraße",
    "Dreisamstraße",
    "Fabrikstraße",
    "Lehener Straße",
    "Egonstraße",
    "Wannerstraße",
    "Talstraße",
    "Urachstraße",
    "Erwinstraße",
    "Holbeinstraße",
    "Sautierstraße",
    "Rheinstraße",
    "Belfortstraße",
    "Moltkestraße",
    "Schwimmbadstraße",
    "Maria-Theresia-Straße",
    "Am Bischofskreuz",
    "Vaubanallee",
    "Rieselfeldallee",
    "Bissierstraße",
    "Berliner Allee",
    "Paduaallee",
    "Sulzburger Straße",
)
CITY_POSTCODES: tuple[str, ...] = (
    "79098",
    "79100",
    "79102",
    "79104",
    "79106",
    "79108",
    "79110",
    "79111",
    "79112",
    "79114",
    "79115",
    "79117",
)
CITY_PHONE_PREFIX = "0761"
MOBILE_PREFIXES: tuple[str, ...] = ("0151", "0152", "0157", "0160", "0162", "0170", "0171", "0176")
EMAIL_DOMAINS: tuple[str, ...] = (
    "web.de",
    "gmx.de",
    "gmx.net",
    "t-online.de",
    "posteo.de",
    "mailbox.org",
    "gmail.com",
    "outlook.de",
    "freenet.de",
    "icloud.com",
)

# Real German banks (Bankleitzahl, BIC, name), weighted towards the region. The tests check them
# against schwifty's copy of the Bundesbank registry.
BANKS: tuple[tuple[str, str, str, int], ...] = (
    ("68050101", "FRSPDE66XXX", "Sparkasse Freiburg-Nördlicher Breisgau", 30),
    ("68090000", "GENODE61FR1", "Volksbank Freiburg", 14),
    ("50010517", "INGDDEFFXXX", "ING-DiBa", 12),
    ("12030000", "BYLADEM1001", "Deutsche Kreditbank Berlin", 8),
    ("43060967", "GENODEM1GLS", "GLS Gemeinschaftsbank", 5),
    ("10010010", "PBNKDEFFXXX", "Postbank Ndl der Deutsche Bank", 7),
    ("60050101", "SOLADEST600", "Landesbank Baden-Württemberg/Baden-Württembergische Bank", 5),
    ("66050101", "KARSDE66XXX", "Sparkasse Karlsruhe", 3),
    ("37050198", "COLSDE33XXX", "Sparkasse KölnBonn", 2),
    ("70150000", "SSKMDEMMXXX", "Stadtsparkasse München", 2),
    ("20050550", "HASPDEHHXXX", "Hamburger Sparkasse", 2),
    ("10050000", "BELADEBEXXX", "BSK 1818 - Berliner Sparkasse", 2),
    ("60090100", "VOBADESSXXX", "Volksbank Stuttgart", 2),
    ("50040000", "COBADEFFXXX", "Commerzbank", 3),
)

DISCOUNTS: tuple[tuple[str, str, str, float], ...] = (
    # (kind, label, "percent" | "amount", probability per course)
    ("student", "ermäßigt für Schüler/innen, Studierende und Auszubildende", "percent", 0.6),
    ("pensioner", "ermäßigt für Rentnerinnen und Rentner", "percent", 0.2),
    ("jobseeker", "ermäßigt für Arbeitsuchende und Bürgergeld-Beziehende", "percent", 0.3),
    ("disability", "ermäßigt mit Schwerbehindertenausweis (ab GdB 50)", "percent", 0.15),
    ("social_pass", "mit Sozialpass der Stadt", "percent", 0.25),
    ("early_booking", "Frühbucherrabatt bis vier Wochen vor Kursbeginn", "amount", 0.06),
)
