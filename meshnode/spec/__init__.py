"""The job spec: model, reading (templates, YAML/JSON), normalization and validation.

Pure: this package imports nothing that does I/O, reads the clock or draws randomness, so
the sans-IO core can use it (see tests/test_import_rules.py).
"""

from meshnode.errors import Problem, SpecError
from meshnode.spec.load import (
    MAX_SPEC_BYTES,
    decode_document,
    encode_job,
    job_from_document,
    load_job,
)
from meshnode.spec.model import (
    JOB_TYPES,
    NETWORK_TYPES,
    Constraint,
    DockerParams,
    EmptyParams,
    EngineSpec,
    HttpSourceParams,
    InputSource,
    IpfsSourceParams,
    Job,
    LocalDirectoryParams,
    NetworkSpec,
    Params,
    PublisherSpec,
    Resources,
    ResultPath,
    S3PublisherParams,
    S3SourceParams,
    SourceSpec,
    Task,
    Timeouts,
    WasmParams,
)
from meshnode.spec.quantities import (
    QuantityError,
    parse_cpu_millicores,
    parse_gpu_count,
    parse_size_bytes,
)
from meshnode.spec.template import TemplateError, render_template
from meshnode.spec.variables import TemplateVariablesError, template_variables

__all__ = [
    "JOB_TYPES",
    "MAX_SPEC_BYTES",
    "NETWORK_TYPES",
    "Constraint",
    "DockerParams",
    "EmptyParams",
    "EngineSpec",
    "HttpSourceParams",
    "InputSource",
    "IpfsSourceParams",
    "Job",
    "LocalDirectoryParams",
    "NetworkSpec",
    "Params",
    "Problem",
    "PublisherSpec",
    "QuantityError",
    "Resources",
    "ResultPath",
    "S3PublisherParams",
    "S3SourceParams",
    "SourceSpec",
    "SpecError",
    "Task",
    "TemplateError",
    "TemplateVariablesError",
    "Timeouts",
    "WasmParams",
    "decode_document",
    "encode_job",
    "job_from_document",
    "load_job",
    "parse_cpu_millicores",
    "parse_gpu_count",
    "parse_size_bytes",
    "render_template",
    "template_variables",
]
