/*
 * mepa._inplace: let a task's result array be allocated where the host wants it.
 *
 * A process worker copies each big result into a region of a shared output buffer. A
 * Region is a NumPy memory handler (NEP 49) that hands that region out, already mapped, to
 * the first array of exactly its size that is created while the handler is installed;
 * every other allocation goes to the handler it replaced. When the task's result is that
 * array, the worker skips the copy. Installing is context-local (NumPy keeps the handler
 * in a context variable) and lasts from enter() to exit().
 *
 * The Region keeps the object that maps the memory alive for as long as an array may
 * point into it: until exit() if the region is free then, else until that array is freed.
 * A process forked while a Region is entered never gets the region (the mapping is shared:
 * the child's array would be the parent's result).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>
#include <unistd.h>

#define NPY_NO_DEPRECATED_API NPY_1_22_API_VERSION
#define NPY_TARGET_VERSION NPY_1_22_API_VERSION
#include <numpy/arrayobject.h>

typedef struct {
    char *base;
    size_t size;
    int taken;           /* an array owns the region */
    int open;            /* between enter() and exit(): the region may be handed out */
    pid_t pid;           /* the process that entered: a forked child never gets the region */
    PyObject *keep;      /* keeps the mapping alive; NULL once it may go */
    PyObject *previous;  /* capsule of the handler this one forwards to */
    PyDataMemAllocator forward;
} Slot;

static void
release_keep(Slot *slot)
{
    if (slot->keep != NULL) {
        PyGILState_STATE state = PyGILState_Ensure();
        Py_CLEAR(slot->keep);
        PyGILState_Release(state);
    }
}

static void *
slot_malloc(void *ctx, size_t size)
{
    Slot *slot = (Slot *)ctx;
    if (slot->open && !slot->taken && size == slot->size && getpid() == slot->pid) {
        slot->taken = 1;
        return slot->base;
    }
    return slot->forward.malloc(slot->forward.ctx, size);
}

static void *
slot_calloc(void *ctx, size_t nelem, size_t elsize)
{
    Slot *slot = (Slot *)ctx;
    if (slot->open && !slot->taken && elsize != 0 && nelem == slot->size / elsize
            && nelem * elsize == slot->size && getpid() == slot->pid) {
        slot->taken = 1;
        memset(slot->base, 0, slot->size);
        return slot->base;
    }
    return slot->forward.calloc(slot->forward.ctx, nelem, elsize);
}

static void
slot_free(void *ctx, void *ptr, size_t size)
{
    Slot *slot = (Slot *)ctx;
    if (ptr != NULL && ptr == (void *)slot->base) {
        slot->taken = 0;
        if (!slot->open) {
            release_keep(slot);
        }
        return;
    }
    slot->forward.free(slot->forward.ctx, ptr, size);
}

static void *
slot_realloc(void *ctx, void *ptr, size_t new_size)
{
    Slot *slot = (Slot *)ctx;
    if (ptr != NULL && ptr == (void *)slot->base) {
        /* the region cannot grow or move: the array moves to ordinary memory */
        void *moved = slot->forward.malloc(slot->forward.ctx, new_size ? new_size : 1);
        if (moved == NULL) {
            return NULL;
        }
        memcpy(moved, slot->base, new_size < slot->size ? new_size : slot->size);
        slot_free(ctx, ptr, slot->size);
        return moved;
    }
    return slot->forward.realloc(slot->forward.ctx, ptr, new_size);
}

static void
destroy_handler(PyObject *capsule)
{
    PyDataMem_Handler *handler = PyCapsule_GetPointer(capsule, "mem_handler");
    if (handler == NULL) {
        PyErr_WriteUnraisable(capsule);
        return;
    }
    Slot *slot = (Slot *)handler->allocator.ctx;
    Py_XDECREF(slot->keep);
    Py_XDECREF(slot->previous);
    PyMem_RawFree(slot);
    PyMem_RawFree(handler);
}

typedef struct {
    PyObject_HEAD
    PyObject *handler;   /* capsule of this region's handler */
    PyObject *replaced;  /* the handler enter() replaced, until exit() */
    Slot *slot;          /* owned by the capsule */
} RegionObject;

static int
Region_init(RegionObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"buffer", NULL};
    PyObject *owner;
    Py_buffer view;

    if (self->handler != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Region is already initialised");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O:Region", kwlist, &owner)) {
        return -1;
    }
    if (PyObject_GetBuffer(owner, &view, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0) {
        return -1;
    }
    char *base = view.buf;
    size_t size = (size_t)view.len;
    PyBuffer_Release(&view);
    if (size == 0) {
        PyErr_SetString(PyExc_ValueError, "Region needs a buffer of at least one byte");
        return -1;
    }

    PyObject *previous = PyDataMem_GetHandler();
    if (previous == NULL) {
        return -1;
    }
    PyDataMem_Handler *forward = PyCapsule_GetPointer(previous, "mem_handler");
    if (forward == NULL) {
        Py_DECREF(previous);
        return -1;
    }
    Slot *slot = PyMem_RawCalloc(1, sizeof(Slot));
    PyDataMem_Handler *handler = PyMem_RawCalloc(1, sizeof(PyDataMem_Handler));
    if (slot == NULL || handler == NULL) {
        PyMem_RawFree(slot);
        PyMem_RawFree(handler);
        Py_DECREF(previous);
        PyErr_NoMemory();
        return -1;
    }
    slot->base = base;
    slot->size = size;
    slot->keep = Py_NewRef(owner);
    slot->previous = previous;
    slot->forward = forward->allocator;
    strncpy(handler->name, "mepa_result_region", sizeof(handler->name) - 1);
    handler->version = 1;
    handler->allocator.ctx = slot;
    handler->allocator.malloc = slot_malloc;
    handler->allocator.calloc = slot_calloc;
    handler->allocator.realloc = slot_realloc;
    handler->allocator.free = slot_free;

    self->handler = PyCapsule_New(handler, "mem_handler", destroy_handler);
    if (self->handler == NULL) {
        Py_DECREF(slot->keep);
        Py_DECREF(previous);
        PyMem_RawFree(slot);
        PyMem_RawFree(handler);
        return -1;
    }
    self->slot = slot;
    return 0;
}

static int
check_ready(RegionObject *self)
{
    if (self->handler == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Region is not initialised");
        return -1;
    }
    return 0;
}

static PyObject *
Region_enter(RegionObject *self, PyObject *Py_UNUSED(ignored))
{
    if (check_ready(self) < 0) {
        return NULL;
    }
    if (self->replaced != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Region is already entered");
        return NULL;
    }
    if (self->slot->keep == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Region was already used");
        return NULL;
    }
    PyObject *old = PyDataMem_SetHandler(self->handler);
    if (old == NULL) {
        return NULL;
    }
    self->replaced = old;
    self->slot->pid = getpid();
    self->slot->open = 1;
    Py_RETURN_NONE;
}

static PyObject *
Region_exit(RegionObject *self, PyObject *Py_UNUSED(ignored))
{
    if (check_ready(self) < 0) {
        return NULL;
    }
    if (self->replaced == NULL) {
        Py_RETURN_NONE;
    }
    self->slot->open = 0;
    PyObject *mine = PyDataMem_SetHandler(self->replaced);
    if (mine == NULL) {
        return NULL;
    }
    Py_DECREF(mine);
    Py_CLEAR(self->replaced);
    if (!self->slot->taken) {
        release_keep(self->slot);
    }
    Py_RETURN_NONE;
}

static PyObject *
Region_get_taken(RegionObject *self, void *Py_UNUSED(closure))
{
    if (check_ready(self) < 0) {
        return NULL;
    }
    return PyBool_FromLong(self->slot->taken);
}

static PyObject *
Region_get_address(RegionObject *self, void *Py_UNUSED(closure))
{
    if (check_ready(self) < 0) {
        return NULL;
    }
    return PyLong_FromVoidPtr(self->slot->base);
}

static PyObject *
Region_get_size(RegionObject *self, void *Py_UNUSED(closure))
{
    if (check_ready(self) < 0) {
        return NULL;
    }
    return PyLong_FromSize_t(self->slot->size);
}

static void
Region_dealloc(RegionObject *self)
{
    if (self->replaced != NULL) {
        /* collected while entered: put the replaced handler back */
        self->slot->open = 0;
        PyObject *mine = PyDataMem_SetHandler(self->replaced);
        if (mine == NULL) {
            PyErr_WriteUnraisable((PyObject *)self);
        }
        Py_XDECREF(mine);
        Py_CLEAR(self->replaced);
    }
    Py_XDECREF(self->handler);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef Region_methods[] = {
    {"enter", (PyCFunction)Region_enter, METH_NOARGS,
     "Install the handler in the current context: an array of the region's size created "
     "now gets the region."},
    {"exit", (PyCFunction)Region_exit, METH_NOARGS,
     "Put the replaced handler back; the region is handed out no more."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Region_getset[] = {
    {"taken", (getter)Region_get_taken, NULL, "Whether an array owns the region now.", NULL},
    {"address", (getter)Region_get_address, NULL, "Address of the region's first byte.", NULL},
    {"size", (getter)Region_get_size, NULL, "Size of the region in bytes.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject RegionType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "mepa._inplace.Region",
    .tp_doc = PyDoc_STR(
        "Region(buffer): a NumPy memory handler that gives a writable buffer, once at a "
        "time, to the first array of exactly its size."),
    .tp_basicsize = sizeof(RegionObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Region_init,
    .tp_dealloc = (destructor)Region_dealloc,
    .tp_methods = Region_methods,
    .tp_getset = Region_getset,
};

static struct PyModuleDef inplace_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "mepa._inplace",
    .m_doc = "Results allocated in place: a NumPy memory handler over one buffer.",
    .m_size = -1,
};

PyMODINIT_FUNC
PyInit__inplace(void)
{
    import_array();
    if (PyType_Ready(&RegionType) < 0) {
        return NULL;
    }
    PyObject *module = PyModule_Create(&inplace_module);
    if (module == NULL) {
        return NULL;
    }
    if (PyModule_AddObjectRef(module, "Region", (PyObject *)&RegionType) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
