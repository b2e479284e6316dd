/* Compiles llhttp's llhttp.c from the C sources that Debian's node-llhttp
 * ships in /usr/share/llhttp (bookworm has no libllhttp-dev); nothing of
 * llhttp is copied into this repository.  One file per llhttp source, as
 * they do not build as a single translation unit. */
#pragma GCC diagnostic ignored "-Wunused-parameter"
#pragma GCC diagnostic ignored "-Wimplicit-fallthrough"
#pragma GCC diagnostic ignored "-Wcast-qual"
#pragma GCC diagnostic ignored "-Wswitch-enum"
#pragma GCC diagnostic ignored "-Wmissing-prototypes"
/* Strict mode rejects obs-fold and invalid characters in header names,
 * which the lenient build lets through (request smuggling vectors). */
#define LLHTTP_STRICT_MODE 1
#include <llhttp/llhttp.c>
