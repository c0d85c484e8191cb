"""What the caller hears, in Spanish (the default) and English.

Pure text: the machine names a sentence (:class:`~callops.ivr.machine.PromptKey`)
and its arguments; :func:`render` turns that into words in the call's language.
Dates and job statuses are spoken in that language too.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date

from callops.ivr.machine import Language, Line, PromptKey

# Twilio <Say>/<Gather> language codes (https://www.twilio.com/docs/voice/twiml/gather#language).
TWILIO_LANGUAGE: Mapping[Language, str] = {Language.SPANISH: "es-MX", Language.ENGLISH: "en-US"}

STATUS_NAMES: Mapping[Language, Mapping[str, str]] = {
    Language.SPANISH: {
        "pending": "pendiente",
        "scheduled": "programado",
        "in_progress": "en progreso",
        "on_hold": "en espera",
        "completed": "completado",
        "cancelled": "cancelado",
    },
    Language.ENGLISH: {
        "pending": "pending",
        "scheduled": "scheduled",
        "in_progress": "in progress",
        "on_hold": "on hold",
        "completed": "completed",
        "cancelled": "cancelled",
    },
}

MONTHS: Mapping[Language, tuple[str, ...]] = {
    Language.SPANISH: (
        "enero",
        "febrero",
        "marzo",
        "abril",
        "mayo",
        "junio",
        "julio",
        "agosto",
        "septiembre",
        "octubre",
        "noviembre",
        "diciembre",
    ),
    Language.ENGLISH: (
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ),
}

K = PromptKey
CATALOGUE: Mapping[Language, Mapping[PromptKey, str]] = {
    Language.SPANISH: {
        K.WELCOME: "Bienvenido al servicio de trabajos de campo.",
        K.SESSION_RESTARTED: "Su sesión anterior terminó; empecemos de nuevo.",
        K.STATE_LOST: "Tuvimos un problema con su llamada; empecemos de nuevo.",
        K.ASK_CLIENT_ID: "Marque o diga su número de cliente y después la tecla gato.",
        K.LANGUAGE_HINT: "Para español, oprima asterisco o diga español.",
        K.LANGUAGE_SELECTED: "Muy bien, continuamos en español.",
        K.CLIENT_GREETING: "Cliente {name}.",
        K.ASK_JOB_NUMBER: "Marque o diga el número de trabajo y después la tecla gato.",
        K.CLIENT_NOT_FOUND: "No encontré el cliente {client_id}.",
        K.JOB_NOT_FOUND: "No encontré el trabajo {job_number} del cliente {client_id}.",
        K.READ_JOB: (
            "Trabajo {job_number}: {title}, en {address}. Estado: {status}. Programado para el {date}."
        ),
        K.READ_JOB_UNSCHEDULED: "Trabajo {job_number}: {title}, en {address}. Estado: {status}. Sin fecha.",
        K.CONFIRM_JOB: "Si es correcto, oprima 1 o diga sí. Para elegir otro trabajo, oprima 2 o diga no.",
        K.ASK_ACTION: (
            "Para cambiar el estado, oprima 1 o diga estado. Para agregar una nota, oprima 2 o diga nota. "
            "Para reprogramar, oprima 3 o diga reprogramar. Para terminar, oprima 0 o diga adiós."
        ),
        K.ANYTHING_ELSE: "¿Algo más?",
        K.ASK_STATUS: "Elija el nuevo estado.",
        K.STATUS_OPTION: "{status}, oprima {key}.",
        K.STATUS_IS_FINAL: "Este trabajo está {status} y su estado ya no puede cambiar.",
        K.STATUS_NOT_OFFERED: "El estado {status} no está disponible para este trabajo.",
        K.ASK_NOTE: "Diga su nota ahora. Al terminar, guarde silencio.",
        K.SAY_YOUR_NOTE: "Por favor, diga la nota en voz alta.",
        K.ASK_DATE: (
            "Marque la nueva fecha con ocho dígitos: año, mes y día. "
            "Por ejemplo, 2 0 2 7 0 3 1 5 para el 15 de marzo de 2027. Después, la tecla gato."
        ),
        K.INVALID_DATE: "Esa fecha no es válida.",
        K.DATE_IN_PAST: "El {date} ya pasó.",
        K.DATE_TOO_FAR: "El {date} está a más de un año.",
        K.GO_BACK_HINT: "Para volver al menú, oprima 0.",
        K.STATUS_DONE: "Listo. El trabajo {job_number} quedó {status}.",
        K.NOTE_DONE: "Listo. Guardé su nota en el trabajo {job_number}.",
        K.RESCHEDULE_DONE: "Listo. El trabajo {job_number} quedó programado para el {date}.",
        K.REJECTED_JOB_GONE: "Ese trabajo ya no está disponible.",
        K.REJECTED_STATUS_NOT_ALLOWED: "El trabajo cambió mientras tanto; ahora está {status}.",
        K.REJECTED_JOB_CLOSED: "Un trabajo {status} no se puede reprogramar.",
        K.NOT_UNDERSTOOD: "No le entendí.",
        K.NO_INPUT: "No escuché su respuesta.",
        K.NUMBER_TOO_LONG: "Ese número es demasiado largo.",
        K.TOO_MANY_ATTEMPTS: "Lo siento, no pudimos completar su solicitud después de varios intentos.",
        K.TRANSFERRING: "Le comunico con un operador.",
        K.GOODBYE: "Gracias por llamar. Hasta luego.",
    },
    Language.ENGLISH: {
        K.WELCOME: "Welcome to the field jobs line.",
        K.SESSION_RESTARTED: "Your previous session ended; let's start again.",
        K.STATE_LOST: "We had a problem with your call; let's start again.",
        K.ASK_CLIENT_ID: "Key in or say your client number, then press pound.",
        K.LANGUAGE_HINT: "For English, press star or say English.",
        K.LANGUAGE_SELECTED: "All right, we'll continue in English.",
        K.CLIENT_GREETING: "Client {name}.",
        K.ASK_JOB_NUMBER: "Key in or say the job number, then press pound.",
        K.CLIENT_NOT_FOUND: "I could not find client {client_id}.",
        K.JOB_NOT_FOUND: "I could not find job {job_number} for client {client_id}.",
        K.READ_JOB: "Job {job_number}: {title}, at {address}. Status: {status}. Scheduled for {date}.",
        K.READ_JOB_UNSCHEDULED: "Job {job_number}: {title}, at {address}. Status: {status}. No date set.",
        K.CONFIRM_JOB: "If that is right, press 1 or say yes. To pick another job, press 2 or say no.",
        K.ASK_ACTION: (
            "To change the status, press 1 or say status. To add a note, press 2 or say note. "
            "To reschedule, press 3 or say reschedule. To finish, press 0 or say goodbye."
        ),
        K.ANYTHING_ELSE: "Anything else?",
        K.ASK_STATUS: "Choose the new status.",
        K.STATUS_OPTION: "{status}, press {key}.",
        K.STATUS_IS_FINAL: "This job is {status} and its status can no longer change.",
        K.STATUS_NOT_OFFERED: "The status {status} is not available for this job.",
        K.ASK_NOTE: "Say your note now. When you are done, stay silent.",
        K.SAY_YOUR_NOTE: "Please say the note out loud.",
        K.ASK_DATE: (
            "Key in the new date as eight digits: year, month and day. "
            "For example, 2 0 2 7 0 3 1 5 for March 15, 2027. Then press pound."
        ),
        K.INVALID_DATE: "That is not a valid date.",
        K.DATE_IN_PAST: "{date} has already passed.",
        K.DATE_TOO_FAR: "{date} is more than a year away.",
        K.GO_BACK_HINT: "To go back to the menu, press 0.",
        K.STATUS_DONE: "Done. Job {job_number} is now {status}.",
        K.NOTE_DONE: "Done. I saved your note on job {job_number}.",
        K.RESCHEDULE_DONE: "Done. Job {job_number} is now scheduled for {date}.",
        K.REJECTED_JOB_GONE: "That job is no longer available.",
        K.REJECTED_STATUS_NOT_ALLOWED: "The job changed in the meantime; it is now {status}.",
        K.REJECTED_JOB_CLOSED: "A {status} job cannot be rescheduled.",
        K.NOT_UNDERSTOOD: "I did not understand.",
        K.NO_INPUT: "I did not hear an answer.",
        K.NUMBER_TOO_LONG: "That number is too long.",
        K.TOO_MANY_ATTEMPTS: "I'm sorry, we could not complete your request after several attempts.",
        K.TRANSFERRING: "I'm transferring you to an operator.",
        K.GOODBYE: "Thank you for calling. Goodbye.",
    },
}

# Said when the state store (Redis) or the database cannot be reached: the caller's
# language is unknown then, so both, Spanish first.
APOLOGY = {
    Language.SPANISH: "Lo sentimos, tenemos un problema técnico.",
    Language.ENGLISH: "We're sorry, we are having a technical problem.",
}
APOLOGY_TRANSFER = {
    Language.SPANISH: "Le comunicamos con un operador.",
    Language.ENGLISH: "Transferring you to an operator.",
}
APOLOGY_CALL_LATER = {
    Language.SPANISH: "Por favor, llame más tarde.",
    Language.ENGLISH: "Please call again later.",
}


def spoken_date(iso: str, language: Language) -> str:
    when = date.fromisoformat(iso)
    month = MONTHS[language][when.month - 1]
    if language is Language.SPANISH:
        return f"{when.day} de {month} de {when.year}"
    return f"{month} {when.day}, {when.year}"


def _spoken_args(line: Line, language: Language) -> dict[str, str]:
    spoken = dict(line.args)
    if "status" in spoken:
        spoken["status"] = STATUS_NAMES[language].get(spoken["status"], spoken["status"])
    if spoken.get("date"):
        spoken["date"] = spoken_date(spoken["date"], language)
    return spoken


def render(line: Line, call_language: Language) -> tuple[str, Language]:
    """The words of ``line`` and the language they are in."""
    language = line.language or call_language
    return CATALOGUE[language][line.key].format(**_spoken_args(line, language)), language
