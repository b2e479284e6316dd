/* Compiles llhttp's http.c from the C sources that Debian's node-llhttp
 * ships in /usr/share/llhttp (bookworm has no libllhttp-dev); nothing of
 * llhttp is copied into this repository.  One file per llhttp source, as
 * they do not build as a single translation unit. */
#pragma GCC diagnostic ignored "-Wunused-parameter"
#pragma GCC diagnostic ignored "-Wimplicit-fallthrough"
#pragma GCC diagnostic ignored "-Wcast-qual"
#pragma GCC diagnostic ignored "-Wswitch-enum"
#pragma GCC diagnostic ignored "-Wmissing-prototypes"
#include <llhttp/http.c>
