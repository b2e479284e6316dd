/* Prototypes shared between the files of csrc/, grouped by file. */
#ifndef CD_INTERNAL_H
#define CD_INTERNAL_H

#include "state.h"

#include <stddef.h>
#include <stdint.h>

#define cd_container_of(ptr, type, member)                                 \
    ((type *)((char *)(ptr)-offsetof(type, member)))

/* ---- strings.c ---------------------------------------------------- */
int cd_strings_init(cd_state *st);
int cd_state_traverse(cd_state *st, visitproc visit, void *arg);
void cd_state_clear(cd_state *st);

/* ---- module.c: each type file adds its types here ----------------- */
int cd_types_init(PyObject *module, cd_state *st);

#endif
