"""What both servers' settings objects share (pydantic-settings): every environment variable read once into a
typed object, command-line flags that take their defaults from it (as llama-cpp-python's server does), and a
bad value refused at start in one line that names its variable or flag (exit status 2).

A field's environment variable is its `validation_alias`, else the class's env_prefix + its name in capitals.
A field with `json_schema_extra={"flags": ("-l", "--max-seq-len")}` is also a command-line flag; its help is
the field's description plus the variable and the default, so `--help` cannot drift from the code."""
import argparse
import sys
import textwrap
import typing

from pydantic import AfterValidator, BeforeValidator, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _log_level(v: str) -> str:
    if v.upper() not in LOG_LEVELS:
        raise ValueError(f"use one of {', '.join(LOG_LEVELS)}")
    return v.upper()


# LOG_LEVEL's type in both settings objects: one of LOG_LEVELS, any case, spaces around ignored.
LogLevel = typing.Annotated[str, BeforeValidator(lambda v: v.strip() if isinstance(v, str) else v),
                            AfterValidator(_log_level)]


class EnvSettings(BaseSettings):
    """Empty variables count as unset (.env.example's `QWEN_MAX_SEQ_LEN=`); others in the environment are
    not this object's business."""

    model_config = SettingsConfigDict(env_ignore_empty=True, extra="ignore", populate_by_name=True)

    @classmethod
    def env_name(cls, field: str) -> str:
        alias = cls.model_fields[field].validation_alias
        return alias if isinstance(alias, str) else cls.model_config.get("env_prefix", "") + field.upper()

    @classmethod
    def from_env(cls, prog: str):
        """The settings from the environment (load the .env first); a bad value ends the start with
        `prog: error: NAME='value': what is wanted` and exit status 2."""
        try:
            return cls()
        except ValidationError as e:
            field, value, msg = _first_error(cls, e)
            print(f"{prog}: error: {cls.env_name(field)}={value!r}: {msg}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None

    @classmethod
    def flags(cls, field: str) -> tuple:
        return tuple((cls.model_fields[field].json_schema_extra or {}).get("flags", ()))

    def add_flags(self, parser: argparse.ArgumentParser):
        """A flag for each field that has some; its default (shown in the help) is this object's value."""
        for name, info in type(self).model_fields.items():
            if not self.flags(name):
                continue
            choices = typing.get_args(info.annotation) if typing.get_origin(info.annotation) is typing.Literal else None
            parser.add_argument(*self.flags(name), dest=name, default=argparse.SUPPRESS, choices=choices,
                                metavar=None if choices else self.flags(name)[-1].lstrip("-").upper().replace("-", "_"),
                                help=self.describe(name))

    def describe(self, name: str) -> str:
        value = getattr(self, name)
        shown = "" if value is None or value == "" else f", default {value}"
        return f"{type(self).model_fields[name].description} (env {self.env_name(name)}{shown})"


    def env_only(self) -> str:
        """The settings that have no flag, one paragraph each, for the end of --help (RawDescriptionHelpFormatter)."""
        fields = [n for n in type(self).model_fields if not self.flags(n)]
        return "environment only:\n" + "\n".join(textwrap.fill(
            f"{self.env_name(n)}{self._default(n)}: {type(self).model_fields[n].description}", 100,
            initial_indent="  ", subsequent_indent="      ") for n in fields)

    def _default(self, name: str) -> str:
        value = getattr(self, name)
        return "" if value is None or value == "" else f" (default {value})"

    def with_flags(self, args: argparse.Namespace, parser: argparse.ArgumentParser):
        """A copy with the flags given on the command line, checked by the same rules as the variables;
        a bad one is argparse's usage error (exit status 2) naming the flag."""
        given = {k: v for k, v in vars(args).items() if k in type(self).model_fields}
        try:
            return type(self).model_validate({**self.model_dump(), **given})
        except ValidationError as e:
            field, value, msg = _first_error(type(self), e)
            parser.error(f"argument {'/'.join(self.flags(field)) or field}: {value!r}: {msg}")


def _first_error(cls, e: ValidationError):
    """(field name, the value given, pydantic's message) of a validation error's first problem."""
    err = e.errors()[0]
    loc = str(err["loc"][0]) if err["loc"] else ""
    field = next((n for n, f in cls.model_fields.items() if loc in (n, f.validation_alias)), loc)
    return field, err.get("input"), err["msg"].removeprefix("Value error, ")
