/* mepa._tally: the counter behind ``progress.update(n=1)`` in a task.
 *
 * A task may call ``update`` once per element of a loop of millions, so the call must cost
 * about what a list append costs. ``tally.add()``, ``tally.add(n)`` and ``tally.add(n=n)``
 * add ``n`` (default 1); calling the tally itself does the same (through vectorcall), but a
 * bound built-in method such as ``tally.add`` takes CPython's specialised call path. Python ints that fit a 64-bit
 * integer are summed in C; anything else (floats, NumPy scalars, wrong types) is kept in a
 * list for ``take`` to hand over, so the caller can add it up or report it. Every method runs
 * without releasing the GIL and without calling Python code while it changes the state, so
 * concurrent calls from several threads add up exactly.
 *
 * mepa/_progress.py falls back to a pure-Python tally with the same interface when this
 * module was not compiled.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <limits.h>
#include <stddef.h>

typedef struct {
    PyObject_HEAD
    long long total;   /* sum of the int updates since the last take() */
    PyObject *others;  /* list of the other updates, or NULL */
    vectorcallfunc vectorcall;
} TallyObject;

static int
tally_add(TallyObject *self, PyObject *n)
{
    if (PyLong_CheckExact(n)) {
        int overflow = 0;
        long long value = PyLong_AsLongLongAndOverflow(n, &overflow);
        if (!overflow && !(value == -1 && PyErr_Occurred())) {
            long long sum;
            if (!__builtin_add_overflow(self->total, value, &sum)) {
                self->total = sum;
                return 0;
            }
        }
        PyErr_Clear();
    }
    if (self->others == NULL) {
        self->others = PyList_New(0);
        if (self->others == NULL) {
            return -1;
        }
    }
    return PyList_Append(self->others, n);
}

static PyObject *
tally_add_method(TallyObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    Py_ssize_t nkw = kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames);
    PyObject *n;

    if (nargs == 0 && nkw == 0) {
        if (self->total < LLONG_MAX) {
            self->total += 1;
            Py_RETURN_NONE;
        }
        n = PyLong_FromLong(1);
        if (n == NULL) {
            return NULL;
        }
        int failed = tally_add(self, n);
        Py_DECREF(n);
        if (failed) {
            return NULL;
        }
        Py_RETURN_NONE;
    }
    if (nargs + nkw != 1) {
        PyErr_Format(PyExc_TypeError,
                     "update() takes at most 1 argument (n, the number of items done), "
                     "got %zd", nargs + nkw);
        return NULL;
    }
    if (nkw == 1 &&
        PyUnicode_CompareWithASCIIString(PyTuple_GET_ITEM(kwnames, 0), "n") != 0) {
        PyErr_Format(PyExc_TypeError,
                     "update() got an unexpected keyword argument '%U'; pass n=...",
                     PyTuple_GET_ITEM(kwnames, 0));
        return NULL;
    }
    n = args[0];
    if (tally_add(self, n) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
tally_vectorcall(PyObject *op, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    return tally_add_method((TallyObject *)op, args, PyVectorcall_NARGS(nargsf), kwnames);
}

static PyObject *
tally_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    if (PyTuple_GET_SIZE(args) != 0 || (kwds != NULL && PyDict_GET_SIZE(kwds) != 0)) {
        PyErr_SetString(PyExc_TypeError, "Tally() takes no arguments");
        return NULL;
    }
    TallyObject *self = (TallyObject *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    self->total = 0;
    self->others = NULL;
    self->vectorcall = tally_vectorcall;
    return (PyObject *)self;
}

static int
tally_traverse(TallyObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->others);
    return 0;
}

static int
tally_clear(TallyObject *self)
{
    Py_CLEAR(self->others);
    return 0;
}

static void
tally_dealloc(TallyObject *self)
{
    PyObject_GC_UnTrack(self);
    tally_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
tally_take(TallyObject *self, PyObject *Py_UNUSED(ignored))
{
    /* Read and reset first: building the result may run the garbage collector. */
    long long total = self->total;
    PyObject *others = self->others;
    self->total = 0;
    self->others = NULL;
    if (others == NULL) {
        others = PyList_New(0);
        if (others == NULL) {
            return NULL;
        }
    }
    PyObject *value = PyLong_FromLongLong(total);
    if (value == NULL) {
        Py_DECREF(others);
        return NULL;
    }
    PyObject *result = PyTuple_Pack(2, value, others);
    Py_DECREF(value);
    Py_DECREF(others);
    return result;
}

static PyObject *
tally_pending(TallyObject *self, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(self->total != 0 || self->others != NULL);
}

static PyMethodDef tally_methods[] = {
    {"add", (PyCFunction)(void (*)(void))tally_add_method, METH_FASTCALL | METH_KEYWORDS,
     "add(n=1)\n--\n\n"
     "Add ``n``, as calling the tally does. The bound method ``tally.add`` is the fastest "
     "callable: CPython calls bound built-in methods through a specialised path."},
    {"take", (PyCFunction)tally_take, METH_NOARGS,
     "take()\n--\n\n"
     "Return ``(total, others)`` and start again from nothing: ``total`` is the sum of the "
     "int updates, ``others`` the list of the other values, in the order they came."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef tally_getset[] = {
    {"pending", (getter)tally_pending, NULL, "Whether anything was added since the last take().",
     NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject TallyType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "mepa._tally.Tally",
    .tp_doc = "Tally()\n--\n\n"
              "A counter called as ``tally(n=1)``; see the module documentation.",
    .tp_basicsize = sizeof(TallyObject),
    .tp_itemsize = 0,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_new = tally_new,
    .tp_dealloc = (destructor)tally_dealloc,
    .tp_traverse = (traverseproc)tally_traverse,
    .tp_clear = (inquiry)tally_clear,
    .tp_call = PyVectorcall_Call,
    .tp_vectorcall_offset = offsetof(TallyObject, vectorcall),
    .tp_methods = tally_methods,
    .tp_getset = tally_getset,
};

static struct PyModuleDef tally_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "mepa._tally",
    .m_doc = "The counter behind progress.update(n=1) in a task (C accelerator).",
    .m_size = -1,
};

PyMODINIT_FUNC
PyInit__tally(void)
{
    if (PyType_Ready(&TallyType) < 0) {
        return NULL;
    }
    PyObject *module = PyModule_Create(&tally_module);
    if (module == NULL) {
        return NULL;
    }
    Py_INCREF(&TallyType);
    if (PyModule_AddObject(module, "Tally", (PyObject *)&TallyType) < 0) {
        Py_DECREF(&TallyType);
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
