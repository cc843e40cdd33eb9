from setuptools import find_packages, setup

setup(
    name="talos-images",
    use_incremental=True,
    description="Twisted daemon serving raw Talos Linux disk images from the Talos Image Factory",
    long_description=open("README.md").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    # twisted/plugins has no __init__.py (a namespace shared with Twisted): listed by hand
    packages=find_packages(include=["talos_twisted", "talos_twisted.*"]) + ["twisted.plugins"],
    install_requires=[
        "incremental>=24.7",
        "twisted[tls]>=24.7",
        "treq>=24.9",
        "klein>=24.8",
        "pyyaml>=6",
        "zstandard>=0.22",
        "attrs>=23",
        "prometheus-client>=0.20",
    ],
    extras_require={
        "test": [
            "pytest>=8",
            "pytest-twisted>=1.14",
            "pytest-timeout>=2.3",
            # tests/test_typing.py: mypy with mypy.ini; pinned so a new release cannot turn CI red
            "mypy==2.4.1",
            "mypy-zope==1.0.17",
            "types-PyYAML",
            "hypothesis>=6",
            "selenium>=4.20",
            # tests/test_openapi.py: the document is valid OpenAPI, and schemathesis holds the daemon
            # to it; pinned, a new release brings new checks
            "schemathesis==4.32.5",
            "openapi-spec-validator==0.9.0",
            # tests/test_redbot.py: REDbot, the HTTP linter; pinned, a new release brings new checks
            "redbot==2.7.1",
            # tests/test_tracing.py: the spans, with the SDK's in-memory exporter
            "opentelemetry-api>=1.27,<2",
            "opentelemetry-sdk>=1.27,<2",
        ],
        # tracing (talos_twisted/tracing.py): a no-op without it
        "otel": [
            "opentelemetry-api>=1.27,<2",
            "opentelemetry-sdk>=1.27,<2",
        ],
    },
    entry_points={"console_scripts": ["talos-images-cache = talos_twisted.cachetool:main"]},
    include_package_data=True,
)
