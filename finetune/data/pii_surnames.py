"""Chinese surnames, single and compound (the common ~400 of the Hundred Family Surnames and today's registers).

A Chinese name found next to an after-cue (…先生, …老师) or beside an identifier must start with one:
the tagger also tags transliterated and fictional names, and a surname keeps the match to people
named the Chinese way.
"""

SURNAMES = tuple(
    sorted(
        set(
            (
                "欧阳 司马 上官 诸葛 东方 皇甫 慕容 令狐 夏侯 尉迟 公孙 长孙 宇文 司徒 "
                "王 李 张 刘 陈 杨 黄 赵 吴 周 徐 孙 马 朱 胡 郭 何 高 林 罗 郑 梁 谢 宋 唐 许 韩 冯 邓 曹 彭 曾 肖 田 董 袁 "
                "潘 于 蒋 蔡 余 杜 叶 程 苏 魏 吕 丁 任 沈 姚 卢 姜 崔 钟 谭 陆 汪 范 金 石 廖 贾 夏 韦 付 方 白 邹 孟 熊 秦 "
                "邱 江 尹 薛 闫 段 雷 侯 龙 史 陶 黎 贺 顾 毛 郝 龚 邵 万 钱 严 覃 武 戴 莫 孔 向 汤 常 温 康 施 文 牛 樊 葛 "
                "邢 安 齐 易 乔 伍 庞 颜 倪 庄 聂 章 鲁 岳 翟 殷 詹 申 欧 耿 关 兰 焦 俞 左 柳 甘 祝 包 宁 尚 符 舒 阮 柯 纪 "
                "梅 童 凌 毕 单 季 裴 霍 涂 成 苗 谷 盛 曲 翁 冉 骆 蓝 路 游 辛 靳 管 柴 蒙 鲍 华 喻 祁 蒲 房 滕 屈 饶 解 牟 "
                "艾 尤 阳 时 穆 农 司 卓 古 吉 缪 简 车 项 连 芦 麦 褚 娄 窦 戚 岑 景 党 宫 费 卜 冷 晏 席 卫 米 柏 宗 瞿 桂 "
                "全 佟 应 臧 闵 苟 邬 边 卞 姬 师 和 仇 栾 隋 商 刁 沙 荣 巫 寇 桑 郎 甄 丛 仲 虞 敖 巩 明 佘 池 查 麻 苑 迟 邝 "
                "朴 祖 阚 井 官 封 匡 习 宦 艾 鱼 容 向 古 易 慎 戈 廖 庾 终 暨 居 衡 步 都 耿 满 弘 国 文 寇 广 禄 阙 东 殴 "
                "殳 沃 利 蔚 越 夔 隆 师 巩 厍 聂 晁 勾 敖 融 冷 訾 辛 阚 那 简 饶 空 曾 毋 沙 乜 养 鞠 须 丰 巢 蒯 相 后 荆 "
                "红 游 竺 权 逯 盖 益 桓 公 仉 督 晋 楚 闫 法 汝 鄢 涂 钦 归 海 岳 帅 缑 亢 况 郈 有 琴 商 牟 佘 佴 伯 赏 墨 "
                "傅 阎 冀 云 索 鹿 郜 原 劳 萧 冼 哈 谯 笪 年 爱 阳 佟 第五 言 福 邸 宓 蓬 郗 班 仰 秋 仲 伊 宫 宁 仇 栾 暴 甘 钭 厉 戎 贝 雍 郤 璩 桑 濮 牧"
            ).split()
        ),
        key=lambda s: (-len(s), s),
    )
)
