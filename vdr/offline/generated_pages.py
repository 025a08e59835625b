"""Generated document pages: an offline stand-in for a visual document retrieval dataset.

Each row is a query, the page that answers it, and hard negatives, in the same layout as
``tomaarsen/llamaindex-vdr-en-train-preprocessed`` (``query``, ``image``, ``negative_0`` ...).

A page is a small report: an organisation's header band (each organisation has its own colour, as
company reports do), a title naming the organisation, the figure and the year, a paragraph, and the
figure as a table, a bar chart or a line chart. The query asks for one value that only that page holds.
The negatives are built to be hard: the same organisation and figure in another year (same colour and
layout), the same organisation with another figure, and another organisation with the same figure.
Everything is drawn from a seeded ``random.Random``, so the same seed gives the same pages, byte for byte.
"""

from __future__ import annotations

import random
import zlib
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont

#: The name that stands for the generated pages wherever a dataset id or path is accepted.
GENERATED_PAGES_ID = "generated:pages"

ORGANISATIONS = [
    "Northwind",
    "Contoso",
    "Fabrikam",
    "Tailspin",
    "Litware",
    "Adatum",
    "Proseware",
    "Wingtip",
    "Lucerne",
    "Margie",
    "Fourth Coffee",
    "Alpine Ski",
    "Coho Winery",
    "Humongous",
    "Woodgrove",
    "Trey Research",
    "Blue Yonder",
    "Wide World",
    "Graphic Design",
    "School of Fine Art",
]
ORGANISATION_KINDS = ["Logistics", "Energy", "Health", "Bank", "Foods", "Airlines", "Labs", "Retail"]
# (figure name, unit, chart kind). The chart kind is fixed per figure, as house styles usually are.
FIGURES = [
    ("revenue", "M$", "bar"),
    ("operating cost", "M$", "bar"),
    ("headcount", "people", "table"),
    ("customer count", "k", "line"),
    ("energy use", "GWh", "line"),
    ("carbon emissions", "kt", "table"),
]
PERIODS = ["Q1", "Q2", "Q3", "Q4"]
YEARS = list(range(2015, 2025))
PALETTE = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
    (0, 70, 120),
    (120, 40, 0),
    (0, 110, 60),
    (150, 0, 90),
    (60, 60, 160),
    (200, 160, 0),
    (90, 150, 150),
    (170, 90, 40),
    (50, 50, 50),
    (100, 180, 100),
]
FILLER = (
    "This page reports the figure below for the period named in the title. Values are unaudited and "
    "rounded. Comparisons with earlier years use the same method. See the notes at the end of the "
    "report for definitions, sources and the scope of each measure."
).split()

PAGE_SIZE = (256, 362)  # A4 proportions; the tiny processor resizes to at most 320*320 pixels


@dataclass(frozen=True)
class PageSpec:
    """Everything that decides what one page shows."""

    organisation: str
    figure: int  # index into FIGURES
    year: int
    values: tuple[float, ...]  # one per period

    @property
    def title(self) -> str:
        name, unit, _ = FIGURES[self.figure]
        return f"{self.organisation}: {name} {self.year} ({unit})"


def _organisation_names() -> list[str]:
    return [f"{org} {kind}" for org, kind in zip(ORGANISATIONS, ORGANISATION_KINDS * 3)]


def _random_page(rng: random.Random, organisation: str, figure: int, year: int) -> PageSpec:
    scale = rng.choice([10, 50, 100, 500])
    values = tuple(round(rng.uniform(0.2, 1.0) * scale, 1) for _ in PERIODS)
    return PageSpec(organisation, figure, year, values)


def _query(rng: random.Random, page: PageSpec) -> str:
    name, _, _ = FIGURES[page.figure]
    period = rng.choice(PERIODS)
    template = rng.choice(
        [
            "What was the {name} of {org} in {period} {year}?",
            "{org} {name} for {period} {year}",
            "How high was {org}'s {name} in {period} of {year}?",
        ]
    )
    return template.format(name=name, org=page.organisation, period=period, year=page.year)


def _hard_negatives(rng: random.Random, page: PageSpec, organisations: list[str], count: int) -> list[PageSpec]:
    """Pages that look like ``page`` but do not answer its query."""
    other_years = [y for y in YEARS if y != page.year]
    other_figures = [f for f in range(len(FIGURES)) if f != page.figure]
    other_orgs = [o for o in organisations if o != page.organisation]
    makers = [
        lambda: _random_page(rng, page.organisation, page.figure, rng.choice(other_years)),
        lambda: _random_page(rng, page.organisation, rng.choice(other_figures), page.year),
        lambda: _random_page(rng, rng.choice(other_orgs), page.figure, page.year),
        lambda: _random_page(rng, rng.choice(other_orgs), rng.choice(other_figures), rng.choice(YEARS)),
    ]
    return [makers[k % len(makers)]() for k in range(count)]


def _font(size: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def render_page(page: PageSpec, organisations: list[str]) -> Image.Image:
    """Draw ``page`` as an RGB image of ``PAGE_SIZE``."""
    width, height = PAGE_SIZE
    image = Image.new("RGB", PAGE_SIZE, "white")
    draw = ImageDraw.Draw(image)
    colour = PALETTE[organisations.index(page.organisation) % len(PALETTE)]
    draw.rectangle([0, 0, width, 28], fill=colour)
    draw.text((8, 7), page.organisation, fill="white", font=_font(13))
    draw.text((8, 36), page.title, fill="black", font=_font(11))
    _draw_paragraph(draw, top=56, seed=zlib.crc32(page.title.encode()))
    kind = FIGURES[page.figure][2]
    box = (16, 130, width - 16, height - 40)
    if kind == "table":
        _draw_table(draw, page, box, colour)
    else:
        _draw_chart(draw, page, box, colour, kind)
    draw.text((8, height - 18), f"{page.organisation} annual report {page.year}", fill=(90, 90, 90), font=_font(9))
    return image


def _paragraph_lines(seed: int) -> list[str]:
    rng = random.Random(seed)
    words = FILLER[:]
    rng.shuffle(words)
    return [" ".join(words[line * 6 : line * 6 + 6]) for line in range(5)]


def _draw_paragraph(draw: ImageDraw.ImageDraw, top: int, seed: int) -> None:
    for line, text in enumerate(_paragraph_lines(seed)):
        draw.text((8, top + 13 * line), text, fill=(60, 60, 60), font=_font(9))


def page_text(page: PageSpec) -> str:
    """The words ``render_page`` draws, in reading order: the page's text layer (what a PDF would keep)."""
    name, _, kind = FIGURES[page.figure]
    lines = [page.organisation, page.title, *_paragraph_lines(zlib.crc32(page.title.encode()))]
    if kind == "table":
        lines.append(f"Period {name}")  # the header row; a chart has only its labels
    lines += [f"{period} {value:g}" for period, value in zip(PERIODS, page.values)]
    lines.append(f"{page.organisation} annual report {page.year}")
    return "\n".join(lines)


def _draw_table(draw: ImageDraw.ImageDraw, page: PageSpec, box: tuple[int, ...], colour: tuple[int, ...]) -> None:
    left, top, right, _ = box
    row_height = 26
    draw.rectangle([left, top, right, top + row_height], fill=colour)
    draw.text((left + 6, top + 7), "Period", fill="white", font=_font(11))
    draw.text(((left + right) // 2, top + 7), FIGURES[page.figure][0], fill="white", font=_font(11))
    for row, (period, value) in enumerate(zip(PERIODS, page.values), start=1):
        y = top + row * row_height
        draw.rectangle([left, y, right, y + row_height], outline=(180, 180, 180))
        draw.text((left + 6, y + 7), period, fill="black", font=_font(11))
        draw.text(((left + right) // 2, y + 7), f"{value:g}", fill="black", font=_font(11))


def _draw_chart(
    draw: ImageDraw.ImageDraw, page: PageSpec, box: tuple[int, ...], colour: tuple[int, ...], kind: str
) -> None:
    left, top, right, bottom = box
    draw.line([left, bottom, right, bottom], fill="black")
    draw.line([left, top, left, bottom], fill="black")
    peak = max(page.values)
    step = (right - left) / len(PERIODS)
    points = []
    for k, (period, value) in enumerate(zip(PERIODS, page.values)):
        x = left + step * (k + 0.5)
        y = bottom - (bottom - top - 20) * value / peak
        points.append((x, y))
        draw.text((x - 8, bottom + 4), period, fill="black", font=_font(9))
        draw.text((x - 10, y - 14), f"{value:g}", fill="black", font=_font(9))
        if kind == "bar":
            draw.rectangle([x - step * 0.3, y, x + step * 0.3, bottom], fill=colour)
    if kind == "line":
        draw.line(points, fill=colour, width=3)


def generate_rows(num_rows: int, seed: int = 0, num_negatives: int = 4) -> list[dict]:
    """Return ``num_rows`` rows of ``{"query", "image", "negative_0", ...}`` with PIL images, and each page's text
    in ``image_text``, ``negative_0_text``, ... (for text baselines such as BM25)."""
    rng = random.Random(seed)
    organisations = _organisation_names()
    rows = []
    for _ in range(num_rows):
        page = _random_page(rng, rng.choice(organisations), rng.randrange(len(FIGURES)), rng.choice(YEARS))
        row = {"query": _query(rng, page), "image": render_page(page, organisations)}
        texts = {"image_text": page_text(page)}
        for k, negative in enumerate(_hard_negatives(rng, page, organisations, num_negatives)):
            row[f"negative_{k}"] = render_page(negative, organisations)
            texts[f"negative_{k}_text"] = page_text(negative)
        rows.append(row | texts)
    return rows


def vocabulary_text() -> list[str]:
    """Text that covers every word the generated queries and pages use (to train the tiny tokenizer)."""
    rng = random.Random(0)
    organisations = _organisation_names()
    lines = [" ".join(FILLER)]
    for _ in range(2000):
        page = _random_page(rng, rng.choice(organisations), rng.randrange(len(FIGURES)), rng.choice(YEARS))
        lines.append(_query(rng, page))
        lines.append(page.title)
    return lines
