"""Reading deploy/docker/*.Dockerfile without a Docker engine: instructions, stages, and the
shell commands of RUN lines, enough to assert what each image installs and how it runs.

Only the Dockerfile syntax these files use is understood (line continuations, comments, flags
such as ``--mount=...``, exec and shell forms); anything else is an error, never a guess.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "deploy" / "docker"
# The images and what tests/deploy expects of each: (Dockerfile, the mlp requirements installed).
IMAGES = {
    "serve": ("serve.Dockerfile", ["mlp-serve"]),
    "serve-cuda": ("serve-cuda.Dockerfile", ["mlp-serve[cuda]"]),
    "train": ("train.Dockerfile", ["mlp-train", "mlp-serve[export]", "mlp-obs[gpu]"]),
}
SERVE_IMAGES = ("serve", "serve-cuda")


@dataclass
class Instruction:
    keyword: str  # upper case: FROM, RUN, ...
    flags: list[str]  # --mount=..., --from=..., in order
    rest: str  # what follows the flags, continuations joined
    line: int  # where it starts, 1-based

    def exec_form(self) -> list[str] | None:
        """The JSON array of an exec-form instruction, or None for the shell form."""
        text = self.rest.strip()
        if not text.startswith("["):
            return None
        value = json.loads(text)
        if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            raise ValueError(f"line {self.line}: {self.keyword} is not an array of strings")
        return value

    def commands(self) -> list[list[str]]:
        """A shell-form RUN's commands, split at ``&&``, each as shell words."""
        words = shlex.split(self.rest, comments=False)
        commands: list[list[str]] = [[]]
        for word in words:
            if word == "&&":
                commands.append([])
            elif word in {";", "||", "|"}:
                raise ValueError(f"line {self.line}: only && joins commands here, not {word!r}")
            else:
                commands[-1].append(word)
        return [c for c in commands if c]


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction | None:
        found = self.all(keyword)
        return found[-1] if found else None


@dataclass
class Dockerfile:
    path: Path
    preamble: list[Instruction]  # ARGs before the first FROM
    stages: list[Stage]

    @property
    def final(self) -> Stage:
        return self.stages[-1]

    def stage(self, name: str) -> Stage:
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise KeyError(f"{self.path.name} has no stage {name!r}")


def logical_lines(text: str) -> list[tuple[int, str]]:
    """(first line number, the instruction with its continuations joined); comments dropped."""
    lines: list[tuple[int, str]] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not pending):
            continue  # comments may sit inside a continued instruction too
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending.append(stripped[:-1].strip())
            continue
        pending.append(stripped)
        lines.append((start, " ".join(p for p in pending if p)))
        pending = []
    if pending:
        raise ValueError(f"line {start}: the file ends inside a continued instruction")
    return lines


def split_flags(rest: str) -> tuple[list[str], str]:
    flags: list[str] = []
    while rest.startswith("--"):
        flag, _, rest = rest.partition(" ")
        flags.append(flag)
        rest = rest.lstrip()
    return flags, rest


def parse(path: Path) -> Dockerfile:
    preamble: list[Instruction] = []
    stages: list[Stage] = []
    for number, text in logical_lines(path.read_text()):
        keyword, _, rest = text.partition(" ")
        flags, rest = split_flags(rest.strip())
        instruction = Instruction(keyword.upper(), flags, rest, number)
        if instruction.keyword == "FROM":
            words = rest.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            if len(words) not in (1, 3):
                raise ValueError(f"{path.name}:{number}: FROM {rest!r} is not IMAGE [AS NAME]")
            stages.append(Stage(words[0], name))
        elif stages:
            stages[-1].instructions.append(instruction)
        elif instruction.keyword == "ARG":
            preamble.append(instruction)
        else:
            raise ValueError(f"{path.name}:{number}: {keyword} before the first FROM")
    if not stages:
        raise ValueError(f"{path.name} has no FROM")
    return Dockerfile(path, preamble, stages)


def image(name: str) -> Dockerfile:
    return parse(DOCKER / IMAGES[name][0])


def install_commands(stage: Stage) -> list[tuple[Instruction, list[str]]]:
    """Every ``pip install`` or ``uv pip install`` command in the stage's RUN lines."""
    found = []
    for run in stage.all("RUN"):
        for command in run.commands():
            uv_pip = command[:3] == ["uv", "pip", "install"]
            pip = command[0].endswith("pip") and command[1:2] == ["install"]
            python_m_pip = command[1:4] == ["-m", "pip", "install"]
            if uv_pip or pip or python_m_pip:
                found.append((run, command))
    return found


def option_values(command: list[str], option: str) -> list[str]:
    """The values of ``--option VALUE`` and ``--option=VALUE`` in a command."""
    values = []
    for i, word in enumerate(command):
        if word == option and i + 1 < len(command):
            values.append(command[i + 1])
        elif word.startswith(option + "="):
            values.append(word.split("=", 1)[1])
    return values


def positional(command: list[str], options_with_values: set[str]) -> list[str]:
    """The words of a command that are neither options nor their values."""
    words, skip = [], False
    for word in command:
        if skip:
            skip = False
        elif word.startswith("-"):
            skip = word in options_with_values
        else:
            words.append(word)
    return words


def env(stage: Stage) -> dict[str, str]:
    """The stage's ENV settings (KEY=VALUE form), later ones winning."""
    settings: dict[str, str] = {}
    for instruction in stage.all("ENV"):
        for word in shlex.split(instruction.rest):
            key, equals, value = word.partition("=")
            if not equals:
                raise ValueError(f"line {instruction.line}: ENV {word!r} is not KEY=VALUE")
            settings[key] = value
    return settings


def mount(run: Instruction, target: str) -> dict[str, str] | None:
    """The ``--mount`` of a RUN whose target is ``target``, as its key=value fields."""
    for flag in run.flags:
        if flag.startswith("--mount="):
            fields = dict(item.split("=", 1) for item in flag[len("--mount=") :].split(","))
            if fields.get("target") == target:
                return fields
    return None
