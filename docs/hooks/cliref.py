"""The CLI reference, rendered from the ``helios`` argparse parsers (``cli.main.build_parser``), so
every command, argument, default and choice on the page is the one the command accepts."""

from __future__ import annotations

import argparse

import markup

from heliosdb_streaming.cli import main


def _subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, str, argparse.ArgumentParser]]:
    out: list[tuple[str, str, argparse.ArgumentParser]] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            out += [(name, helps.get(name, ""), sub) for name, sub in action.choices.items()]
    return out


def _cell(text: object) -> str:
    """One line of a table cell: pipes, HTML and emphasis characters of the source text escaped."""
    return markup.cell(text)


def _argument(action: argparse.Action) -> str:
    names = ", ".join(f"`{s}`" for s in action.option_strings) or f"`{action.metavar or action.dest}`"
    if action.option_strings and action.nargs != 0:
        names += f" `{action.metavar or action.dest.upper()}`"
    notes = []
    if action.choices and not isinstance(action, argparse._SubParsersAction):
        notes.append("one of " + ", ".join(f"`{c}`" for c in action.choices))
    if action.required and action.option_strings:
        notes.append("required")
    if action.nargs in ("*", "+") or isinstance(action, argparse._AppendAction):
        notes.append("repeatable" if action.option_strings else "one or more")
    unset = action.default is None or action.default is False or action.default in (argparse.SUPPRESS, [])
    if not unset and action.nargs != 0:
        notes.append(f"default `{action.default}`")
    help_text = (action.help or "").replace("%(default)s", str(action.default)) if action.help else ""
    return f"| {names} | {_cell(help_text)} | {_cell('; '.join(notes))} |"


def _command(path: str, help_text: str, parser: argparse.ArgumentParser, level: int) -> list[str]:
    anchor = path.replace(" ", "-")
    out = [f"{'#' * level} `{path}` {{#{anchor}}}", ""]
    text = parser.description or help_text
    if text:
        out += [_cell(text), ""]
    usage = parser.format_usage().removeprefix("usage: ").strip()
    out += ["```text", usage, "```", ""]
    rows = [
        _argument(a)
        for a in parser._actions
        if not isinstance(a, argparse._HelpAction | argparse._SubParsersAction)
        and a.help != argparse.SUPPRESS
    ]
    if rows:
        out += ["| argument | meaning | notes |", "|---|---|---|", *rows, ""]
    if parser.epilog:
        out += [_cell(parser.epilog), ""]
    for name, sub_help, sub in _subcommands(parser):
        out += _command(f"{path} {name}", sub_help, sub, min(level + 1, 4))
    return out


def render() -> str:
    """Every ``helios`` command, depth first, as the argparse parsers define them."""
    parser = main.build_parser()
    parser.prog = "helios"
    out: list[str] = []
    for name, help_text, sub in _subcommands(parser):
        out += _command(f"helios {name}", help_text, sub, 2)
    return "\n".join(out) + "\n"
