"""The contract v1: JSON Schemas (Iglu layout under ``iglu/``), samples, and the validator.

The worker's ingest agent and the producer SDK share :class:`EventValidator`;
consumers and tests check output records with :func:`validate_record`.
"""

from schemas.evolution import check_evolution
from schemas.formats import is_rfc3339_datetime
from schemas.identity import IDENTIFIER_TYPES, identity_key
from schemas.registry import (
    EVENT_TYPES,
    JOURNEY_STAGES,
    KNOWN_EVENT_TYPES,
    RECORD_KINDS,
    SAMPLES_ROOT,
    SCHEMA_ROOT,
    VENDOR,
    EventType,
    SchemaKey,
    iter_schemas,
    load_schema,
    parse_schemaver,
    payload_schema_name,
    schema_versions,
)
from schemas.validate import (
    CHANNEL_MISMATCH,
    CHECK_REASONS,
    DATE_OUT_OF_RANGE,
    FUTURE_EVENT,
    KEY_MISMATCH,
    KEY_TOO_LARGE,
    MISSING_KEY,
    NOT_AN_OBJECT,
    NOT_JSON,
    PROCESSING_ERROR,
    REJECTION_REASONS,
    SCHEMA_VIOLATION,
    TOO_LARGE,
    UNKNOWN_TYPE,
    CompiledSchema,
    EventValidator,
    Rejection,
    validate_record,
)

__all__ = [
    "CHANNEL_MISMATCH",
    "CHECK_REASONS",
    "DATE_OUT_OF_RANGE",
    "EVENT_TYPES",
    "FUTURE_EVENT",
    "IDENTIFIER_TYPES",
    "JOURNEY_STAGES",
    "KEY_MISMATCH",
    "KEY_TOO_LARGE",
    "KNOWN_EVENT_TYPES",
    "MISSING_KEY",
    "NOT_AN_OBJECT",
    "NOT_JSON",
    "PROCESSING_ERROR",
    "RECORD_KINDS",
    "REJECTION_REASONS",
    "SAMPLES_ROOT",
    "SCHEMA_ROOT",
    "SCHEMA_VIOLATION",
    "TOO_LARGE",
    "UNKNOWN_TYPE",
    "VENDOR",
    "CompiledSchema",
    "EventType",
    "EventValidator",
    "Rejection",
    "SchemaKey",
    "check_evolution",
    "identity_key",
    "is_rfc3339_datetime",
    "iter_schemas",
    "load_schema",
    "parse_schemaver",
    "payload_schema_name",
    "schema_versions",
    "validate_record",
]
