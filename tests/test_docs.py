"""README says what the code does: the exit-code list and the defaults it quotes come from the code."""

from __future__ import annotations

import re

from tests.conftest import REPO

README = (REPO / "README.md").read_text()


def _error_classes():
    import beautyrt.engines.errors as ee
    import beautyrt.export.errors  # noqa: F401 - registers its subclasses
    import beautyrt.runtime.errors  # noqa: F401
    import beautyrt.runtime.serve.errors  # noqa: F401 - the service's own (80..89)

    seen, todo = [], [ee.BeautyrtError]
    while todo:
        c = todo.pop()
        seen.append(c)
        todo.extend(c.__subclasses__())
    return seen


def test_readme_exit_codes_are_the_codes_the_code_uses():
    """Every exit code a beautyrt error (or the CLI itself) can exit with is in README's Errors list, and every
    code listed there exists. Base classes that are never raised themselves are not listed."""
    import subprocess

    bullet = README[README.index("- **Errors**") :]
    bullet = bullet[: bullet.index(")")]
    listed = {int(n) for n in re.findall(r"\b(\d+) [a-z]", bullet)}
    src = subprocess.run(
        ["grep", "-rhoE", r"raise [A-Za-z]+Error\(|raise Cancelled\(", "engines", "runtime", "export", "cli"],
        capture_output=True,
        text=True,
        cwd=REPO,
    ).stdout
    raised = {m[6:-1] for m in src.split()} | {m for m in re.findall(r"raise (\w+)\(", src)}
    codes = set()
    for c in _error_classes():
        leaf = not c.__subclasses__()
        if leaf or c.__name__ in raised:
            codes.add(c.exit_code)
    from beautyrt.cli.main import INTERNAL_ERROR

    codes |= {INTERNAL_ERROR, 130}  # the CLI's own: a bug, and Ctrl-C
    assert listed == codes, (
        f"README lists {sorted(listed - codes)} that the code lacks, misses {sorted(codes - listed)}"
    )


def test_readme_defaults_are_the_code_defaults():
    from beautyrt.engines.backends import DEFAULT_BACKEND
    from beautyrt.runtime.objective import DEFAULT_WEIGHTS
    from beautyrt.runtime.settings import (
        DEFAULT_COVARIANCE,
        DEFAULT_FINALISTS,
        DEFAULT_GENERATIONS,
        DEFAULT_MIRRORED,
        DEFAULT_POPSIZE,
        DEFAULT_SIGMA0,
        DEFAULT_START,
        DEFAULT_STRATEGY,
        STRENGTH_RANGE,
        Settings,
    )

    d = Settings()
    opts = README[README.index("- **optimize options**") :]
    opts = opts[: opts.index("\n- **")]
    flat = " ".join(opts.split())
    assert f"`--seed` ({d.seed})" in flat
    assert f"`--space w|groups|wplus` ({d.space})" in flat
    assert f"`--strength` ({d.strength}, range {STRENGTH_RANGE[0]:g}..{STRENGTH_RANGE[1]:g}" in flat
    assert f"`--strategy cma|linear` ({DEFAULT_STRATEGY})" in flat
    assert f"`--backend auto|ort|tensorrt` ({DEFAULT_BACKEND})" in flat
    want = (
        f"else {DEFAULT_GENERATIONS} generations, popsize {DEFAULT_POPSIZE}, sigma {DEFAULT_SIGMA0}, "
        f"start {DEFAULT_START}, {'' if DEFAULT_MIRRORED else 'no '}mirrored sampling, "
        f"covariance {DEFAULT_COVARIANCE}, {DEFAULT_FINALISTS} finalist, "
        f"identity floor {DEFAULT_WEIGHTS['identity_floor']}, "
        f"target {DEFAULT_WEIGHTS['identity_target']}, identity weight {DEFAULT_WEIGHTS['identity_weight']}, "
        f"latent weight {DEFAULT_WEIGHTS['latent_weight']}, "
        f"naturalness weight {DEFAULT_WEIGHTS['naturalness_weight']:g}"
    )
    assert want in flat, want
