"""The Markdown: every relative link and #anchor in the repository's .md files resolves (files
and folders on disk, anchors by GitHub's heading slugs), and the README stays short."""
import re
import subprocess
import unicodedata

import pytest

from conftest import ROOT

LINK = re.compile(r'!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+"[^"]*")?\s*\)')
FENCE = re.compile(r'^\s*(```|~~~)')
ATX = re.compile(r'^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$')


def markdown_files() -> list:
    """The .md files git tracks or would track (untracked but not ignored)."""
    try:
        names = subprocess.run(['git', 'ls-files', '--cached', '--others', '--exclude-standard',
                                '*.md'], cwd=ROOT, capture_output=True, text=True,
                               check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):  # not a git checkout
        names = [str(p.relative_to(ROOT)) for p in ROOT.rglob('*.md')
                 if not any(part.startswith('.') or part in ('venv', 'data')
                            for part in p.relative_to(ROOT).parts[:-1])]
    return sorted({n for n in names if (ROOT / n).is_file()})


def prose_lines(text: str) -> list:
    """The lines outside fenced code blocks."""
    lines, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(line)
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: the rendered text lower-cased, characters other than
    letters, digits, marks, '_', '-' and ' ' removed, each space a hyphen."""
    text = re.sub(r'!?\[([^\]]*)\]\([^)]*\)', r'\1', heading)  # links: their text
    text = re.sub(r'<[^>]+>', '', text).replace('`', '').replace('*', '')
    kept = ''.join(c for c in text.lower()
                   if c in '_- ' or unicodedata.category(c)[0] in 'LNM')
    return kept.replace(' ', '-')


def anchors(path) -> set:
    """Every anchor GitHub makes for a file's headings (ATX and setext), duplicates numbered."""
    lines, seen, found = prose_lines(path.read_text(encoding='utf-8')), {}, set()
    headings = []
    for i, line in enumerate(lines):
        m = ATX.match(line)
        if m:
            headings.append(m.group(2))
        elif (i + 1 < len(lines) and line.strip() and not line.startswith(('|', '-', '*', ' '))
              and re.fullmatch(r'(=+|-+)\s*', lines[i + 1])):
            headings.append(line.strip())
    for heading in headings:
        base = slug(heading)
        n = seen.get(base, 0)
        found.add(base if n == 0 else f'{base}-{n}')
        seen[base] = n + 1
    return found


def links(path) -> list:
    """The link targets in a file's prose (not in code blocks or inline code)."""
    out = []
    for line in prose_lines(path.read_text(encoding='utf-8')):
        line = re.sub(r'`[^`]*`', '', line)
        out += LINK.findall(line)
    return out


def test_slug_follows_github():
    assert slug('Training: `train.py`') == 'training-trainpy'
    assert slug('x2 and x8: SRResNet transferred from x4, fine-tuned on a CPU') == \
        'x2-and-x8-srresnet-transferred-from-x4-fine-tuned-on-a-cpu'
    assert slug('Set-up, tests, first result') == 'set-up-tests-first-result'
    assert slug('Deployment: ONNX (`scripts/export_onnx.py`)') == \
        'deployment-onnx-scriptsexport_onnxpy'


def test_anchors_number_duplicates_and_skip_code(tmp_path):
    page = tmp_path / 'p.md'
    page.write_text('Title\n=====\n\n## A b\n\n```\n# not a heading\n```\n\n## A b\n')
    assert anchors(page) == {'title', 'a-b', 'a-b-1'}


def test_links_found_outside_code_only(tmp_path):
    page = tmp_path / 'p.md'
    page.write_text('see [x](docs/a.md#b) and ![i](images/c.png "t")\n`[no](in-code.md)`\n'
                    '```\n[no](fenced.md)\n```\n')
    assert links(page) == ['docs/a.md#b', 'images/c.png']


FILES = markdown_files()


def test_the_docs_are_found():
    assert {'README.md', 'weights/README.md', 'docs/training.md'} <= set(FILES)


@pytest.mark.parametrize('name', FILES)
def test_every_relative_link_and_anchor_resolves(name):
    page = ROOT / name
    broken = []
    for target in links(page):
        if re.match(r'[a-z][a-z0-9+.-]*:', target, re.I):  # http:, https:, mailto: ...
            continue
        path, _, anchor = target.partition('#')
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f'{target}: no such file')
        elif anchor and dest.suffix == '.md' and anchor not in anchors(dest):
            broken.append(f'{target}: no heading with anchor #{anchor} in {dest.name}')
    assert not broken, f'{name}: ' + '; '.join(broken)


def test_readme_fits_on_a_few_screens():
    assert len((ROOT / 'README.md').read_text().splitlines()) <= 300
