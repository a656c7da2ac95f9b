"""The console's settings (environment variables): topic-admin's (the re-drive runs its code
with them) plus where to listen, how often to sample, and the token that allows actions."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, field_validator, model_validator

from topic_admin_service.settings import TopicAdminSettings


class ConsoleSettings(TopicAdminSettings):
    console_host: str = Field("127.0.0.1", min_length=1,
                              description="Address the console listens on (the image sets 0.0.0.0).")
    console_port: int = Field(8080, ge=1, le=65535, description="Port of the console's web pages.")
    console_token: SecretStr | None = Field(
        None, description="Token that allows actions (re-drive); a secret, never shown or logged. "
                          "Unset (and no CONSOLE_TOKEN_FILE): the console is read-only.")
    console_token_file: Path | None = Field(
        None, description="File holding the token (a secrets file); instead of CONSOLE_TOKEN.")
    console_refresh_s: float = Field(2.0, ge=0.2, le=60,
                                     description="Seconds between two samples of offsets and members.")
    console_page_size: int = Field(50, ge=1, le=1000, description="Dead letters per page.")

    # (not named `_empty_is_unset`: that would replace KafkaSettings' validator of the same name,
    # and compose's empty KAFKA_SASL_MECHANISM= would be refused)
    @field_validator("console_token", "console_token_file", mode="before")
    @classmethod
    def _empty_token_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @model_validator(mode="after")
    def _long_enough_token(self) -> ConsoleSettings:
        """CONSOLE_TOKEN_FILE is read into console_token by the rule every secret has
        (jobpipe.settings.KafkaSettings: X_FILE; both set, unreadable or empty: refused)."""
        if self.console_token is not None and len(self.console_token.get_secret_value()) < 8:
            raise ValueError("CONSOLE_TOKEN: at least 8 characters")
        return self

    def token(self) -> str | None:
        """The token actions need (None: the console is read-only)."""
        return None if self.console_token is None else self.console_token.get_secret_value()
