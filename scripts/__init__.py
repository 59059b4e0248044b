"""Developer tooling: benches that need a JACK loopback, comparisons with Kyutai's CLI, the
screenshots, the JACK dummy sound card the device tests use.  Not part of the installed
package.  Run a tool from the project root as a module, e.g. `python -m scripts.bench_aec`;
the tests import from here (`from scripts import jackdummy`), never the other way round."""
