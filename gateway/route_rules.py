"""Is a question about code (the local Qwen) or general (GigaChat)? Weighted rules, Russian and English,
pure Python, decided in tens of microseconds: code syntax and error output weigh most, then technical
words (a stem list per language), while words that are technical only sometimes ("python", "class",
"код", "питон") weigh less and are outweighed by the general context they often come in (snakes, islands,
jokes, school). The evaluation set is tests/routing_eval.jsonl (its held-out half was not used to write
these rules); tests/test_routing_eval.py keeps the accuracy above a floor."""
import re

CODE, GENERAL = "code", "general"
THRESHOLD = 2  # points from which a question is about code
MAX_CHARS = 6000  # a question's head is enough to tell; keeps the cost flat for a 100k-character paste

# Syntax, error output, commands: (pattern, points). Matched on the text as written.
_SYNTAX = [(re.compile(p, re.M), w) for p, w in (
    (r"```", 4),
    (r"`[^`\n]{2,80}`", 2),
    (r"Traceback \(most recent call last\)|^\s+at [\w.$<>]+\(|File \"[^\"]+\", line \d+", 5),
    (r"\b[A-Z]\w*(Error|Exception)\b|\bnpm ERR!|segmentation fault|core dumped|^error:", 4),
    (r"^\s*(def|class|import|from|function|const|let|var|public|private|static|for|while|if|return|"
     r"#include|package|using|SELECT|INSERT|UPDATE|DELETE|CREATE)\b.*[(:{=;]", 3),
    (r"\b(def|func|fn)\s+\w+\s*\(|\bfunction\s*\w*\s*\(|=>|->|::|\w+\.\w+\([^)\n]*\)|\w+\[['\"]?\w+['\"]?\]", 3),
    (r"\bSELECT\b[\s\S]{1,200}?\bFROM\b|\bINSERT INTO\b|\bGROUP BY\b|\bORDER BY\b|\b(INNER|LEFT|RIGHT) JOIN\b", 4),
    (r"(^|[;|&]\s*|\$ )(sudo|ls|cd|grep|chmod|chown|kubectl|docker|git|pip|npm|yarn|curl|wget|ssh|apt|apt-get|"
     r"yum|brew|systemctl|journalctl|make|cargo|go|python3?|node|wc|find|awk|sed|cat|tail)\s+[-\w.*/$'\"]", 3),
    (r"[\w-]+\.(py|js|ts|tsx|jsx|java|go|rs|cpp|cc|hpp|h|cs|rb|php|sh|ya?ml|json|toml|ini|conf|sql|xml|html|css|"
     r"vue|kt|swift|ipynb|env|lock|gradle|properties)\b", 3),
    (r"^\s*[\w.-]+\s*[:=]\s*\S+.*\n\s*[\w.-]+\s*[:=]\s*\S+", 3),  # two lines of key: value (a config)
    (r"\b(GET|POST|PUT|PATCH|DELETE|HEAD)\b", 2),
    (r"[{};]\s*$|\b\w+\s*(==|!=|<=|>=|\+=|\*\*)\s*\w+|\b\d+\s*%\s*\d+", 2),
    (r"\b\w+_\w+\b|\b[a-z]+[A-Z]\w*\(|\b[a-z]+\.[a-z]+\b(?!\.)", 1),  # snake_case, camelCase(, a.b
)]

# Words (lower case; a Russian entry is a stem: "функци" matches функция, функции, ...): points each.
_STRONG = """python3 пайтон javascript typescript js ts c++ c# golang kotlin php perl scala haskell sql mysql
postgresql postgres sqlite mongodb mongo redis bash zsh powershell linux unix ubuntu debian docker dockerfile
kubernetes k8s kubectl nginx gunicorn uwsgi git github gitlab api rest graphql http https json yaml yml xml csv
regex regexp django flask fastapi react vue angular node nodejs node.js npm pip webpack pandas numpy jest pytest
unittest junit variable variables array arrays recursion algorithm algorithms compile compiler compilation debug
debugger debugging refactor refactoring stacktrace segfault mutex mutexes semaphore database databases query
queries orm endpoint endpoints backend frontend deploy deployment container containers tcp udp cors jwt oauth
hashmap decorator decorators closure closures async await goroutine goroutines cron crontab systemd makefile
vba css html div flexbox venv virtualenv alembic nvm repository repo commit commits rebase stash runtime
typeerror keyerror valueerror nullpointerexception ci/cd pipeline sdk framework frameworks oop integer boolean
datetime dataframe lambda callback callbacks middleware microservice microservices serialization serialize
deserialize parse parsing parser tuple tuples dict dictionary iterator iterators generator generators
component components state props hooks usestate useeffect unicode utf-8 encoding localhost ip dns ssl tls ssh
cli gui ui ux backend exception exceptions thread threads
multithreading concurrency latency websocket websockets jvm gc heap binary hash cache caching codebase
переменн массив рекурси алгоритм компил отлад дебаг баг рефактор ревью скрипт бэкенд бекенд фронтенд деплой
репозитори коммит мерж регуляр декоратор замыкани горутин сборщик мьютекс семафор сериализ распарс парсинг
парсер логировани фреймворк программировани юнит кортеж стек ооп джаваскрипт жаваскрипт питоне питону питоном
бд субд индексы запрос запросы запроса запросом вебпак эндпоинт эндпойнт микросервис контейнер виртуальн
компонент операционн асинхрон синхрон многопоточ потоков кодировк сервер серверу сервера сервере бэкапов бэкап
переменные""".split()
_WEAK = """python java rust ruby go swift shell code coding program programming programmer script class classes
method methods object objects function functions string strings list lists loop loops index bug bugs test tests
process processes server servers port ports memory leak profile branch merge push pull library libraries
module modules package packages install error errors fix syntax type types file files config configuration
data table column columns row rows key value byte bytes excel macro terminal command console linter lint
type-safe complexity stack queue sort sorting binary search implement implementation
питон код кода коде кодом функци класс метод объект строк список списк словар цикл индекс ошибк
процесс поток программ программист тест библиотек модул пакет установ таблиц столбц конфиг файл команд
терминал консол реализ очеред сортир поиск сложност тип данных""".split()
_GENERAL = """snake snakes python's reticulated feed pet island coffee ring jewelry gemstone joke jokes poem poems
limerick haiku recipe museum trip travel vacation wedding teacher kid kids child children school teenager
bite bites faucet crab hermit sketch monty soccer chess garden plant
змея змеи питоны питонов питаются остров кофе кольцо анекдот анекдоты стих стихотворение рецепт музей
поездк отпуск свадьб учител ребёнк ребенк детей дети школ выпускн регион номерах марафон""".split()

_STRONG_SET = frozenset(w for w in _STRONG if w.isascii())
_WEAK_SET = frozenset(w for w in _WEAK if w.isascii())
_GENERAL_SET = frozenset(w for w in _GENERAL if w.isascii())
_STEMS = [(tuple(w for w in words if not w.isascii()), points) for words, points in
          ((_GENERAL, -3), (_STRONG, 2), (_WEAK, 1))]
_PHRASES = [(re.compile(p), w) for p, w in (
    (r"\b(in|with|using|на|в|через)\s+(python|питоне|пайтоне|java|javascript|go|rust|c\+\+|c#|bash|sql|"
     r"typescript|kotlin|php|ruby|swift|vba)\b", 3),
    (r"\b(code review|unit tests?|stack trace|list comprehension|big o|o\(n|time complexity|hash map|linked list|"
     r"binary search|garbage collector|race condition|dependency injection|environment variables?|"
     r"virtual environment|regular expressions?|programming languages?|floating point|pull request|"
     r"merge conflict|data type|system call|memory leak|"
     r"сборщик мусора|переменн\w* окружения|тип\w* данных|баз\w* данных|код[ау]? ревью|юнит-тест\w*|"
     r"язык\w* программирования|регулярн\w* выражени\w*|структур\w* данных|сложность алгоритма)\b", 3),
)]
_WORD = re.compile(r"[a-zа-яё][a-zа-яё0-9+#./_]*", re.I)


def _word_points(words):
    points = 0
    for w in words:
        w = w.rstrip(".,/-_")
        if w in _STRONG_SET:
            points += 2
        elif w in _WEAK_SET:
            points += 1
        elif w in _GENERAL_SET:
            points -= 3
        elif not w.isascii():
            points += next((p for stems, p in _STEMS if w.startswith(stems)), 0)
    return points


def score(text: str) -> int:
    """Points for "about code": syntax, phrases and words added up (general words subtract)."""
    text = text[:MAX_CHARS]
    lower = text.lower()
    points = sum(w for p, w in _SYNTAX if p.search(text))
    points += sum(w for p, w in _PHRASES if p.search(lower))
    return points + _word_points(_WORD.findall(lower))


def classify(text: str) -> str:
    """CODE or GENERAL."""
    return CODE if score(text) >= THRESHOLD else GENERAL
