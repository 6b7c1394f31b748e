"""``minilm assignment list|make|grade|gradescope``: the teacher's command (see minilm.classroom)."""

from __future__ import annotations

import argparse
import textwrap

import minilm.classroom as c

EXAMPLES = textwrap.dedent("""\
    examples:
      minilm assignment list                                   # name, chapter, points, holes
      minilm assignment make attention --out hw4/              # the student's folder
      minilm assignment make attention --solution --out key/   # the complete key
      minilm assignment grade hw4/                             # score table
      minilm assignment grade hw4/ --json results.json         # + Gradescope's results.json
      minilm assignment grade hw4/ --visible                   # what a student runs
      minilm assignment gradescope attention --out attention.zip
""")


def add_parser(sub) -> None:
    p = sub.add_parser(
        "assignment", help="cut assignments out of minilm and grade them (for teachers)",
        description="Assignments cut out of the library (a function's body becomes "
                    "NotImplementedError), an autograder that compares the student's code with "
                    "independent implementations, and Gradescope's autograder zip.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    cmds = p.add_subparsers(dest="assignment_command", metavar="COMMAND", required=True)
    cmds.add_parser("list", help="the assignments: name, chapter, points, holes")
    mk = cmds.add_parser("make", help="write the student's folder (or the key)")
    mk.add_argument("name", help="assignment name (see 'minilm assignment list')")
    mk.add_argument("--out", required=True, metavar="DIR", help="new (or empty) folder to write")
    mk.add_argument("--solution", action="store_true", help="write the complete key instead")
    gr = cmds.add_parser("grade", help="grade a student's folder: table, and --json results.json")
    gr.add_argument("folder", nargs="+", metavar="DIR", help="the folder(s) made by 'make'")
    gr.add_argument("--json", metavar="FILE", help="write Gradescope's results.json here (one folder)")
    gr.add_argument("--visible", action="store_true", help="only the tests visible to students")
    gr.add_argument("--timeout", type=float, metavar="S", help="every test's timeout in seconds")
    gs = cmds.add_parser("gradescope", help="write Gradescope's autograder zip")
    gs.add_argument("name", help="assignment name")
    gs.add_argument("--out", required=True, metavar="ZIP", help="the .zip to write")
    p.set_defaults(handler=run)


def run(ns: argparse.Namespace) -> int:
    if ns.assignment_command == "list":
        rows = [("name", "chapter", "points", "tests", "title", "holes")]
        for a in c.list_assignments():
            rows.append((a.name, str(a.chapter), f"{a.points:g}", str(len(a.tests)), a.title,
                         ", ".join(h.name for h in a.holes)))
        w = [max(len(r[i]) for r in rows) for i in range(5)]
        for r in rows:
            print("  ".join(f"{x:<{w[i]}}" for i, x in enumerate(r[:5])) + "  " + r[5])
        return 0
    if ns.assignment_command == "make":
        out = c.make(ns.name, ns.out, solution=ns.solution)
        a = c.load_assignment(ns.name)
        what = "key" if ns.solution else "student's folder"
        print(f"wrote the {what} of '{a.name}' ({a.title}, chapter {a.chapter}, {a.points:g} points) "
              f"to {out}: {', '.join(a.files)}, README.md, test_visible.py")
        return 0
    if ns.assignment_command == "grade":
        if ns.json and len(ns.folder) > 1:
            raise ValueError("--json takes one folder")
        if ns.timeout is not None and not ns.timeout > 0:
            raise ValueError(f"--timeout must be positive, got {ns.timeout}")
        folders = ns.folder[0] if len(ns.folder) == 1 else ns.folder
        reports = c.grade(folders, json_path=ns.json, visible_only=ns.visible, timeout=ns.timeout)
        for r in reports if isinstance(reports, list) else [reports]:
            print(r.table())
            print()
        if ns.json:
            print(f"wrote {ns.json}")
        return 0
    if ns.assignment_command == "gradescope":
        out = c.gradescope_zip(ns.name, ns.out)
        print(f"wrote {out}: upload it as the autograder of a Gradescope programming assignment "
              f"(setup.sh installs minilm; run_autograder grades /autograder/submission)")
        return 0
    raise ValueError(f"unknown assignment command {ns.assignment_command!r}")  # pragma: no cover
