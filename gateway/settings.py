"""The gateway's settings: every environment variable that chat.py, gateway/, providers/, the history
database and gunicorn.conf.py read, read here once (after the .env is loaded), typed and checked. A bad
value ends the start in one line naming its variable (exit status 2); chat.py's flags take their
defaults from this object (common/settings_base.py).

Not here: the gigachat SDK's own GIGACHAT_* connection variables (credentials, scope, URLs, TLS, timeout),
which the SDK reads into its own pydantic-settings object, and the terminal client's CHAT_URL
(gateway/cli.py talks to a gateway; it is not one). Light on purpose: gunicorn.conf.py imports it before
prometheus_client."""
import os
from typing import Literal, Optional

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from common import request_reader
from common.settings_base import LOG_LEVELS, EnvSettings, LogLevel

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the project root


def env(name, default, description, **checks):
    """A field read from exactly the variable `name`."""
    return Field(default, validation_alias=name, description=description, **checks)


class GatewaySettings(EnvSettings):
    model_config = SettingsConfigDict(env_prefix="")

    host: str = Field("127.0.0.1", min_length=1, validation_alias="CHAT_HOST",
                      json_schema_extra={"flags": ("--host",)}, description="bind address")
    port: int = Field(5000, ge=1, le=65535, validation_alias="CHAT_PORT",
                      json_schema_extra={"flags": ("--port",)}, description="port")
    database: str = env("CHAT_DB", os.path.join(HERE, "chat_history.db"),
                        "the history: an SQLite file, or a postgresql:// URL", min_length=1)
    db_pool_max: int = env("CHAT_DB_POOL_MAX", 32, "PostgreSQL connections per process (a stream holds one)",
                           ge=1)
    journal_dir: str = env("CHAT_JOURNAL_DIR", "", "where answers wait while the history database is away "
                                                  "(empty: beside the SQLite file, or a temp dir)")
    default_system_prompt: str = env("DEFAULT_SYSTEM_PROMPT", "", "system prompt for a request that gives none")
    api_key: str = env("CHAT_API_KEY", "", "the key clients must send (Authorization: Bearer); empty: none")
    secrets_to_gigachat: Literal["refuse", "redact", "allow"] = env(
        "CHAT_SECRETS_TO_GIGACHAT", "refuse", "an explicit GigaChat request holding a secret: refuse (400), "
                                              "redact (sent with [REDACTED]) or allow")
    cors_origins: str = env("CHAT_CORS_ORIGINS", "", "browser origins allowed to call the API, comma-separated")
    allowed_hosts: str = env("CHAT_ALLOWED_HOSTS", "", "host names the gateway may be reached by, beside "
                                                       "loopback and IP addresses (comma-separated; * any)")
    qwen_url: str = env("QWEN_URL", "http://127.0.0.1:5001", "the Qwen server(s), comma-separated", min_length=1)
    qwen_timeout: float = env("QWEN_TIMEOUT", 300.0, "seconds to wait for the Qwen server", gt=0)
    qwen_breaker_cooldown: float = env("QWEN_BREAKER_COOLDOWN", 5.0, "seconds a failed upstream stays out", ge=0)
    qwen_status_poll: float = env("QWEN_STATUS_POLL", 1.0, "seconds between looks at each upstream", gt=0)
    qwen_affinity_slack: int = env("QWEN_AFFINITY_SLACK", 0, "requests more than the least busy upstream a "
                                                             "conversation's last one may have", ge=0)
    qwen_temperature: float = env("QWEN_TEMPERATURE", 0.4, "Qwen's default temperature", ge=0)
    qwen_top_p: float = env("QWEN_TOP_P", 0.9, "Qwen's default top_p", gt=0, le=1)
    qwen_top_k: int = env("QWEN_TOP_K", 60, "Qwen's default top_k", ge=0)
    qwen_repetition_penalty: float = env("QWEN_REPETITION_PENALTY", 1.1, "Qwen's default repetition_penalty", gt=0)
    qwen_max_tokens: Optional[int] = env("QWEN_MAX_TOKENS", None, "Qwen's default max_tokens (empty: what fits)",
                                         ge=1)
    gigachat_model: str = env("GIGACHAT_MODEL", "GigaChat", "the GigaChat model asked", min_length=1)
    gigachat_context_tokens: int = env("GIGACHAT_CONTEXT_TOKENS", 32768, "GigaChat's context, to trim long "
                                                                         "conversations", ge=16)
    gigachat_max_concurrency: int = env("GIGACHAT_MAX_CONCURRENCY", 1, "GigaChat calls at once a process", ge=1)
    gigachat_queue_timeout: float = env("GIGACHAT_QUEUE_TIMEOUT", 60.0, "seconds a request waits for a GigaChat "
                                                                        "slot (then 503)", ge=0)
    gunicorn_threads: int = env("GUNICORN_THREADS", 16, "requests served at once a process, streams included",
                                ge=1)
    gunicorn_workers: Optional[int] = env("GUNICORN_WORKERS", None, "gunicorn.conf.py's worker processes "
                                                                    "(default: min(4, 2 x CPUs))", ge=1)
    log_level: LogLevel = env("LOG_LEVEL", "INFO", f"log level: {', '.join(LOG_LEVELS)}")
    slow_client_timeout: float = env(request_reader.TIMEOUT_ENV, request_reader.DEFAULT_TIMEOUT_S,
                                     "seconds a request's head, then its body, may take to arrive (then 408)",
                                     gt=0, le=3600)

    @field_validator("secrets_to_gigachat", mode="before")
    @classmethod
    def _word(cls, v):
        return v.strip().lower() if isinstance(v, str) else v

    def flask_config(self) -> dict:
        """The Flask app's config (the keys the blueprints and providers read)."""
        return {
            "DATABASE": self.database, "DB_POOL_MAX": self.db_pool_max, "JOURNAL_DIR": self.journal_dir,
            "DEFAULT_SYSTEM_PROMPT": self.default_system_prompt,
            "QWEN_URL": self.qwen_url, "QWEN_TIMEOUT": self.qwen_timeout,
            "QWEN_BREAKER_COOLDOWN": self.qwen_breaker_cooldown, "QWEN_STATUS_POLL": self.qwen_status_poll,
            "QWEN_AFFINITY_SLACK": self.qwen_affinity_slack,
            "QWEN_DEFAULTS": {"temperature": self.qwen_temperature, "top_p": self.qwen_top_p,
                              "top_k": self.qwen_top_k, "repetition_penalty": self.qwen_repetition_penalty,
                              "max_tokens": self.qwen_max_tokens},
            "GIGACHAT_MODEL": self.gigachat_model, "GIGACHAT": self.gigachat_options(),
            "API_KEY": self.api_key, "SECRETS_TO_GIGACHAT": self.secrets_to_gigachat,
            "CORS_ORIGINS": [o.strip() for o in self.cors_origins.split(",") if o.strip()],
        }

    def gigachat_options(self) -> dict:
        """providers.gigachat.GigaChatProvider's arguments."""
        return {"model": self.gigachat_model, "context_tokens": self.gigachat_context_tokens,
                "max_concurrency": self.gigachat_max_concurrency, "queue_timeout": self.gigachat_queue_timeout}
